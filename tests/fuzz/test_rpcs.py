"""Every RPC of every contract, fuzzed through the real gateway (public services, with real
API keys of an admin and a normal user) or straight at its backend (internal services,
with minted identities): schema-aware requests and malformed bytes from the descriptors.

Each method must never answer INTERNAL or UNKNOWN, never lose its status to the transport,
never put a traceback or an exception name in any process's log, keep every process SERVING,
and leave no row behind a create that failed. `PARLEY_FUZZ_CASES` sets the total number of
cases (default 10,500, spread evenly over the reachable methods)."""

from __future__ import annotations

import math
import os

import pytest
from hypothesis import HealthCheck, Phase, given, settings

from tests.fuzz.runner import REPORT
from tests.fuzz.strategies import request_cases
from tests.fuzz.surface import UNREACHABLE, all_methods, all_services, method_id

# Hypothesis warns when it renders the 20,000-character edge strings; they are meant to be big.
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")

TOTAL_CASES = int(os.environ.get("PARLEY_FUZZ_CASES", "10500"))
BATCH = 8  # cases sent concurrently
HEALTH_EVERY = 10  # batches


def test_suite_started_cleanly(fuzzer):
    problems = fuzzer.check_health("startup")
    logged = [f"{name}: {line[:300]}" for name, text in fuzzer.startup_log.items() for line in text.splitlines()
              if "Traceback" in line]
    assert not problems and not logged, "\n".join(problems + logged)


def test_every_service_is_reachable_or_listed(fuzzer):
    missing = [s.full_name for s in all_services() if s.full_name not in fuzzer.routes and s.full_name not in UNREACHABLE]
    assert not missing, (f"no process of the suite serves {missing}: start its server in the launcher's SUITE, or "
                         "list it in tests/fuzz/surface.py UNREACHABLE with the reason")


def _cases_per_method(fuzzer) -> int:
    reachable = sum(len(s.methods) for s in all_services() if s.full_name in fuzzer.routes)
    return max(BATCH, math.ceil(TOTAL_CASES / reachable / BATCH) * BATCH)


@pytest.mark.parametrize("method", all_methods(), ids=method_id)
def test_rpc_survives_fuzzing(fuzzer, method):
    service = method.containing_service.full_name
    name = method_id(method)
    route = fuzzer.routes.get(service)
    if route is None:
        assert service in UNREACHABLE, f"{service} is served by no process of the suite and is not listed"
        pytest.skip(f"listed as unreachable: {UNREACHABLE[service]}")
    cases = _cases_per_method(fuzzer)
    REPORT.planned += cases
    pending: list = []
    batches = 0

    def flush():
        nonlocal batches
        fuzzer.run_batch(method, pending[:])
        pending.clear()
        batches += 1
        if batches % HEALTH_EVERY == 0:
            fuzzer.check_health(name)

    # One hypothesis example per case (it avoids repeating itself across examples, not
    # within one), sent in concurrent batches.
    @settings(max_examples=cases, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
    @given(request_cases(method, route.principals))
    def collect(case):
        pending.append(case)
        if len(pending) == BATCH:
            flush()

    collect()
    if pending:
        flush()
    fuzzer.check_health(name)
    fuzzer.check_logs(name)
    ran = sum(REPORT.tally[name].values())
    assert ran >= cases, f"only {ran} of {cases} cases ran"
    findings = [f.line() for f in REPORT.findings if f.method == name]
    assert not findings, f"{len(findings)} findings (first ones):\n" + "\n".join(findings[:12])
