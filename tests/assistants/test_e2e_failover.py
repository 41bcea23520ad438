"""An engine replica killed with SIGKILL mid-run, end to end: its run fails with a reason once
its lease lapses, and the run queued behind it on the same session completes on the other
replica. Both replicas are engines of their own on the shared stack, each behind a gateway,
since A does not survive the test."""

from __future__ import annotations

import asyncio

from parley.assistants.v1 import assistants_pb2
from parley.client import RunDone, RunStatus, TextDelta
from tests.assistants.test_e2e_runs import WAIT, e2e, wait_for  # noqa: F401 - e2e: this module's stack


async def test_a_killed_engine_fails_its_run_and_the_queued_run_completes_on_the_other(e2e):  # noqa: F811
    fake = e2e.fakes["openai"]
    fake.script("e2e-failover", {"endless": True}, {"text": "Finished on replica B."})
    engine_a, port_a = await e2e.replica("a")
    on_a = await e2e.client("frank", port=port_a)
    on_b = await e2e.client_b("frank")
    assistant = await on_a.assistants.create("failover", model="openai/e2e-failover")
    doomed = on_a.assistants.stream_run(assistant.id, "Work forever")
    async for event in doomed:
        if isinstance(event, TextDelta):
            break
    queued = await on_a.assistants.create_run(assistant.id, "Then this", session_id=doomed.session_id,
                                              busy_session="queue")
    assert queued.status == RunStatus.QUEUED

    await asyncio.to_thread(engine_a.kill)  # SIGKILL: no shutdown, no lease released
    doomed.cancel()

    # B tells the rest of the story: the killed run ends FAILED with a reason, within the
    # lease (3 s in this stack; the wait is a bound, not a measurement) ...
    failed = await asyncio.wait_for(
        on_b.assistants.watch_run(doomed.run_id, after_sequence=doomed.last_sequence).result(), WAIT)
    assert failed.status == RunStatus.FAILED
    run = await on_b.assistants.get_run(doomed.run_id)
    assert run.status == RunStatus.FAILED and run.fail_time.seconds
    assert run.last_error.code == assistants_pb2.RUN_ERROR_CODE_SERVER_ERROR and "lease" in run.last_error.message
    # ... and the session is free again: the queued run is claimed by a surviving replica (B or
    # the stack's own engine) and completes.
    events = [event async for event in on_b.assistants.watch_run(queued.id)]
    assert isinstance(events[-1], RunDone) and events[-1].status == RunStatus.COMPLETED
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Finished on replica B."
    finished = await on_b.assistants.get_run(queued.id)
    assert finished.start_time.ToNanoseconds() >= run.fail_time.ToNanoseconds()
    messages = [m async for m in on_b.sessions.messages(doomed.session_id)]
    assert messages[-1].content[0].text == "Finished on replica B." and messages[-1].run_id == queued.id
    # The vendor request of the killed engine's model call was closed too.
    await wait_for(lambda: "e2e-failover" in fake.disconnects, "the killed run's vendor request to close")
