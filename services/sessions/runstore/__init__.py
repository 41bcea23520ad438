"""The run store: the assistants run engine's storage, served by the sessions process as
parley.runstore.v1.RunStoreService.

- `store`: the rules (validation, busy sessions, compare-and-set, event sequences, the
  queue and its leases, the live tail, the function result cache), independent of transport
- `repository`: its SQL, under row-level security
- `changes`: the LISTEN/NOTIFY fan-out that wakes live watchers
- `convert` and `servicer`: protobuf and gRPC, and nothing else
"""

from services.sessions.runstore.store import RunStore

__all__ = ["RunStore"]
