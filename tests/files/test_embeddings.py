"""The files domain's embedder interface and its bounded caches."""

from __future__ import annotations

import ast
from pathlib import Path

import services.files.embeddings as embeddings_module
from services.files.embeddings import BoundedCache, ModelInfo
from services.files.llm_embedder import LLMEmbedder
from services.runtime.identity import IdentityMinter, generate_private_key_pem

DOMAIN_MODULES = ["embeddings", "files", "stores", "worker", "chunking", "extract", "filters", "sniff", "storage",
                  "models", "repository"]


def test_the_files_domain_does_not_import_grpc():
    for name in DOMAIN_MODULES:
        tree = ast.parse((Path(embeddings_module.__file__).parent / f"{name}.py").read_text())
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert not {m for m in imported if m == "grpc" or m.startswith(("grpc.", "parley."))
                    or m == "services.files.llm_embedder"}, name


def test_a_bounded_cache_forgets_the_least_recently_used():
    cache: BoundedCache[str, int] = BoundedCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # "b" is now the oldest
    cache.put("c", 3)
    assert (cache.get("a"), cache.get("b"), cache.get("c"), len(cache)) == (1, None, 3, 2)


async def test_the_llm_embedder_keeps_at_most_its_bound_of_model_facts():
    embedder = LLMEmbedder("127.0.0.1:9", IdentityMinter(generate_private_key_pem()), model_cache_size=8,
                           query_cache_size=4)
    try:
        for i in range(100):  # as many distinct names as callers care to send
            embedder._models.put(f"local/model-{i}", ModelInfo(f"local/model-{i}", 384, 256))
            embedder._queries.put(("m", f"query {i}"), [0.0])
        assert len(embedder._models) == 8 and len(embedder._queries) == 4
    finally:
        await embedder.close()
