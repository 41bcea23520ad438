"""The files service: uploads, storage, text extraction, chunking, embeddings (through the
llm service), vector stores and hybrid search on PostgreSQL with pgvector."""
