"""The sessions service: conversations, messages and feedback in PostgreSQL under RLS."""
