"""After traffic through the real processes, each /metrics endpoint answers with its named
series; a real Prometheus (Debian's) scrapes them all, loads the alert rules and answers a
query for each series; the Grafana dashboard uses only series the services export, and each
of its queries runs on that Prometheus."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import grpc
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from parley.assistants.v1 import assistants_service_pb2, assistants_service_pb2_grpc
from parley.sandbox.v1 import sandbox_service_pb2, sandbox_service_pb2_grpc
from services.runtime.identity import IdentityMinter
from tests.conftest import private_temp_dir
from tests.processes import free_port
from tests.observability.test_alerts import RULES, alert_names
from tests.observability.test_tracing import _composite

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "parley.json"
PROMETHEUS = shutil.which("prometheus")
# The series each service must expose once it has served traffic.
EVERY_SERVICE = {"rpc_server_call_duration_seconds_count", "rpc_server_call_duration_seconds_bucket"}
NAMED = {
    "llm": {"gen_ai_client_token_usage_count", "gen_ai_client_operation_duration_seconds_count", "parley_llm_calls_total",
            "parley_llm_time_to_first_token_seconds_count", "parley_llm_cost_USD_total"},
    "files": {"parley_files_processing_duration_seconds_count"},
    "assistants": {"parley_assistants_runs_total", "parley_assistants_run_duration_seconds_count"},
}
SEED_PANELS = ("Response time", "Success rate", "Tokens per minute", "Cost per model (USD per hour)")


def scrape_names(port: int) -> set[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}


@pytest.fixture(scope="module")
async def traffic(traced_suite, gateway_key, fakes):
    """The composite call (with its run), plus a call to the sandbox and one more to assistants."""
    await _composite(traced_suite, gateway_key, fakes)
    async with grpc.aio.insecure_channel(traced_suite.target("gateway")) as channel:
        await assistants_service_pb2_grpc.AssistantServiceStub(channel).ListAssistants(
            assistants_service_pb2.ListAssistantsRequest(), metadata=(("authorization", f"Bearer {gateway_key}"),),
            timeout=30)
    minter = IdentityMinter((traced_suite.directory / "identity.pem").read_bytes())
    async with grpc.aio.insecure_channel(traced_suite.target("sandbox")) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await sandbox_service_pb2_grpc.SandboxServiceStub(channel).GetSandbox(
                sandbox_service_pb2.GetSandboxRequest(sandbox_id="00000000-0000-0000-0000-000000000000"),
                metadata=minter.metadata("observer"), timeout=30)
        assert missing.value.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT)
    return traced_suite


def _expected(service: str) -> set[str]:
    return EVERY_SERVICE | NAMED.get(service, set())


async def test_each_metrics_endpoint_answers_with_its_named_series(traffic):
    for service, port in traffic.metrics_ports.items():
        names: set[str] = set()
        for _ in range(100):  # the files worker and the usage ledger record moments after the calls
            names = await asyncio.to_thread(scrape_names, port)
            if _expected(service) <= names:
                break
            await asyncio.sleep(0.2)
        assert _expected(service) <= names, (service, sorted(_expected(service) - names))


def _get(base: str, path: str, **params) -> dict:
    url = f"{base}{path}" + ("?" + urllib.parse.urlencode(params) if params else "")
    with urllib.request.urlopen(url, timeout=10) as reply:
        return json.loads(reply.read())


@pytest.fixture(scope="module")
def prometheus(traffic):
    if PROMETHEUS is None:
        pytest.skip("prometheus is not installed (`make install`: Debian's prometheus)")
    directory = private_temp_dir("parley-test-prometheus-")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": "parley", "static_configs": [
            {"targets": [f"127.0.0.1:{port}"], "labels": {"service": service}}
            for service, port in traffic.metrics_ports.items()]}],
    }
    (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = open(directory / "prometheus.log", "wb")  # noqa: SIM115 - the server's for its life
    process = subprocess.Popen(
        [PROMETHEUS, f"--config.file={directory / 'prometheus.yml'}", f"--storage.tsdb.path={directory / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (directory / "prometheus.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{base}/-/ready", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "Prometheus did not become ready"
            time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _query_until(base: str, query: str, condition, timeout: float = 60.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        answer = _get(base, "/api/v1/query", query=query)
        assert answer["status"] == "success", answer
        result = answer["data"]["result"]
        if condition(result) or time.monotonic() > deadline:
            return result
        time.sleep(0.5)


def test_prometheus_scrapes_every_service_and_answers_each_named_series(traffic, prometheus):
    services = set(traffic.metrics_ports)
    up = _query_until(prometheus, 'up{job="parley"}',
                      lambda r: {s["metric"]["service"] for s in r if s["value"][1] == "1"} == services)
    assert {s["metric"]["service"] for s in up if s["value"][1] == "1"} == services
    for service in services:
        for name in sorted(_expected(service)):
            result = _query_until(prometheus, f'{name}{{service="{service}"}}', bool)
            assert result, f"Prometheus has no {name} from {service}"
    rules = _get(prometheus, "/api/v1/rules")["data"]["groups"]
    loaded = {rule["name"]: rule for group in rules for rule in group["rules"] if rule["type"] == "alerting"}
    assert set(loaded) == alert_names()
    assert all(rule["health"] in ("ok", "unknown") for rule in loaded.values()), loaded


def _panels(dashboard: dict) -> list[dict]:
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return [p for p in found if p.get("targets")]


_NAME = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(?=\{|\[)")


def _series_of(expr: str) -> set[str]:
    return {name for name in _NAME.findall(expr) if not name.startswith("$")}


def _concrete(expr: str) -> str:
    return expr.replace("$__rate_interval", "1m").replace("$service", ".*")


def test_the_dashboard_shows_the_four_numbers_from_exported_series(traffic, prometheus):
    dashboard = json.loads(DASHBOARD.read_text())
    panels = {p["title"]: p for p in _panels(dashboard)}
    assert set(SEED_PANELS) <= set(panels)
    exported = set().union(*(scrape_names(port) for port in traffic.metrics_ports.values()))
    for title, panel in panels.items():
        for target in panel["targets"]:
            names = _series_of(target["expr"])
            assert names, (title, target["expr"])
            assert names <= exported, (title, sorted(names - exported))
            result = _query_until(prometheus, _concrete(target["expr"]), bool if title in SEED_PANELS else lambda r: True)
            if title in SEED_PANELS:
                assert result, f"{title}: {target['expr']} answers nothing after traffic"
