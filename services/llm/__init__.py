"""The llm service: every model provider behind one interface, streamed over gRPC, with
retries, fallbacks, request queues, caches, a usage ledger and budgets."""
