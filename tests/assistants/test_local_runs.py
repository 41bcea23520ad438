"""The events a replica keeps of the runs it executed (services/assistants/events.py
LocalRuns), for watchers on this replica: every event of a run while it executes, and of the
runs that ended lately only up to a total (older ones are read from the run store), so an
engine under sustained load keeps flat memory whatever its run rate."""

from __future__ import annotations

from parley.assistants.v1 import assistants_pb2 as apb
from services.assistants.events import KEEP_CLOSED_EVENTS, LocalRuns

EVENTS_PER_RUN = 200


async def _executed(runs: LocalRuns, run_id: str, events: int = EVENTS_PER_RUN, *, close: bool = True):
    local = runs.open(run_id, 1)
    await local.publish([apb.RunEvent(sequence=n + 1, run_id=run_id, message_delta=apb.MessageDelta(text=f"t{n}"))
                         for n in range(events)])
    if close:
        await local.close(ended=True)
    return local


async def test_runs_that_ended_keep_at_most_the_capped_number_of_events_newest_first():
    runs = LocalRuns()
    count = 3 * KEEP_CLOSED_EVENTS // EVENTS_PER_RUN  # three times what may be kept, within a second
    for i in range(count):
        await _executed(runs, f"run-{i}")
    kept = [i for i in range(count) if runs.get(f"run-{i}") is not None]
    assert sum(len(runs.get(f"run-{i}").events) for i in kept) <= KEEP_CLOSED_EVENTS
    # The latest ones, for late watchers on this replica; the oldest are left to the run store.
    assert kept == list(range(count - len(kept), count)) and len(kept) >= KEEP_CLOSED_EVENTS // EVENTS_PER_RUN - 1
    late = [event.sequence async for event in runs.get(f"run-{count - 1}").follow(0)]
    assert late == list(range(1, EVENTS_PER_RUN + 1))


async def test_a_run_still_executing_keeps_every_event_and_a_reopened_run_is_counted_once():
    runs = LocalRuns()
    executing = await _executed(runs, "long", 2 * KEEP_CLOSED_EVENTS, close=False)
    ids = [f"run-{i}" for i in range(2 * KEEP_CLOSED_EVENTS // EVENTS_PER_RUN)]
    for run_id in ids:
        await _executed(runs, run_id)
    assert runs.get("long") is executing and len(executing.events) == 2 * KEEP_CLOSED_EVENTS
    # A run that waited for tool outputs and was started again here: its new events replace
    # the old ones (counted once), and it is kept while it executes.
    await _executed(runs, "again")
    resumed = await _executed(runs, "again", close=False)
    ids += [f"more-{i}" for i in range(2 * KEEP_CLOSED_EVENTS // EVENTS_PER_RUN)]
    for run_id in ids[-2 * KEEP_CLOSED_EVENTS // EVENTS_PER_RUN:]:
        await _executed(runs, run_id)
    assert runs.get("again") is resumed
    await resumed.close(ended=True)
    await executing.close(ended=True)  # larger than the total on its own: left to the run store
    kept = [runs.get(run_id) for run_id in [*ids, "again", "long"] if runs.get(run_id) is not None]
    assert runs.get("long") is None and runs.get("again") is resumed
    assert sum(len(local.events) for local in kept) <= KEEP_CLOSED_EVENTS
