"""The OpenAI-compatible HTTP edge: OpenAI's REST API (Assistants v2, Chat Completions,
Embeddings, Files, Vector stores) translated into Parley's public gRPC calls through the
gateway, which keeps authentication, scopes, limits and input hygiene in one place.

Layout: `app.py` wires the ASGI app; `gateway.py` is the one long-lived gRPC channel and the
call helpers (credential forwarding, deadlines, cancellation on disconnect); `errors.py` maps
google.rpc.Status to OpenAI's error shape; `ids.py` the reversible id mapping; `http.py` bodies,
validation against the `openai` package's own request types, pagination and SSE; one module
of routes per area (`chat.py`, `files.py`, `assistants.py`, `runs.py`) and `convert.py` for
the protobuf ⇄ OpenAI shapes they share.
"""
