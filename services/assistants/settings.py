"""The engine's tunables, independent of where they come from (app.py reads the environment)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EngineSettings:
    replica_id: str
    lease_seconds: float = 30.0
    claim_interval_seconds: float = 1.0
    action_timeout_seconds: float = 600.0
    event_flush_seconds: float = 0.05
    max_concurrent_runs: int = 64
    file_search_token_budget: int = 4000
    # Model calls one run may make (each tool round is one); a run that needs more fails.
    max_model_calls: int = 24
    # How long a run waits for files attached to its session to be indexed for file_search.
    attachment_index_timeout_seconds: float = 120.0
