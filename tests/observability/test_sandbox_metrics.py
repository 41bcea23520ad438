"""The sandbox's executions on the metrics endpoint: a real sandbox service (bubblewrap,
seccomp, ipykernel), one plain execution, one that raises, and one its time wall stops."""

from __future__ import annotations

from google.protobuf import duration_pb2

from tests.conftest import span_exporter
from tests.observability.test_call_metrics import samples, scrape
from tests.sandbox.conftest import (  # noqa: F401 - the sandbox tests' fixtures
    bwrap_installed,
    execute,
    new_sandbox,
    sandbox_channel,
    sandbox_server,
    stub,
)


def total(text: str, name: str, **labels: str) -> float:
    return sum(value for found, value in samples(text, name) if all(found.get(k) == v for k, v in labels.items()))


async def test_executions_by_outcome_and_stops_by_wall(metrics_endpoint, stub, as_user):  # noqa: F811
    md = as_user("metered")
    sandbox = await new_sandbox(stub, md)
    before = scrape(metrics_endpoint)
    assert (await execute(stub, md, sandbox.id, "print(6 * 7)")).stdout == "42\n"
    raised = await execute(stub, md, sandbox.id, "1 / 0")
    assert raised.result.error.name == "ZeroDivisionError"
    stopped = await execute(stub, md, sandbox.id, "while True:\n    pass", timeout=duration_pb2.Duration(seconds=1))
    assert stopped.result.timed_out
    after = scrape(metrics_endpoint)
    count = "parley_sandbox_execution_duration_seconds_count"
    for outcome in ("ok", "error", "stopped"):
        assert total(after, count, outcome=outcome) == total(before, count, outcome=outcome) + 1, outcome
    stops = "parley_sandbox_stops_total"
    assert total(after, stops, wall="wall_time") == total(before, stops, wall="wall_time") + 1
    assert total(after, stops, wall="memory") == total(before, stops, wall="memory")
    # The ExecuteCode span says how the execution ended (the test process traces its servers).
    executions = [s for s in span_exporter.get_finished_spans()
                  if s.name == "/parley.sandbox.v1.SandboxService/ExecuteCode" and "parley.sandbox.outcome" in s.attributes]
    assert [s.attributes["parley.sandbox.outcome"] for s in executions[-3:]] == ["ok", "error", "stopped"]
    assert tuple(executions[-1].attributes["parley.sandbox.stopped_by"]) == ("wall_time",)
