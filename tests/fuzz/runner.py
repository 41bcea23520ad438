"""Sends fuzz cases to the running suite and keeps score: statuses per method, findings
(INTERNAL/UNKNOWN, broken transport, tracebacks in a log, health lost, rows half-written)."""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor

from tests.fuzz.stack import CHANNEL_OPTIONS, Loop, health_status
from tests.processes import ServiceProcess
from tests.fuzz.strategies import (
    _WRONG_JSON_VALUES,
    Case,
    PoolRef,
    Pools,
    TokenMutation,
    build_message,
    describe,
    harvest,
    mutate_token,
)
from tests.fuzz.surface import method_id

UNARY_TIMEOUT = 30.0
STREAM_TIMEOUT = 15.0
MAX_STREAM_MESSAGES = 300
BAD_CODES = {"INTERNAL", "UNKNOWN"}
# Transport failures that stand in for the status the server meant to send (e.g. error
# details past gRPC's metadata limit): the caller never learns what was wrong.
BROKEN_TRANSPORT = re.compile(r"Stream removed|RST_STREAM|Received http2 header with status|Failed parsing HTTP/2")
# A log line that carries a stack trace or names an exception class.
SUSPICIOUS_LOG = re.compile(r"Traceback|\b[A-Z]\w*(?:Error|Exception)\b(?!\w)")
# Exception class names that are part of an expected, handled log line (with the reason).
ALLOWED_LOG = [
]


@dataclass
class Principal:
    name: str
    user: str
    metadata: callable  # () -> metadata tuple
    internal: bool


@dataclass
class Route:
    """Where a service's calls go: through the gateway (public) or straight to its backend."""

    service: str
    process: str  # the process that answers (gateway for public services)
    channel: grpc.aio.Channel
    principals: list[str]  # weighted: repeated names are drawn more often
    # A public service's backend, for the cases whose principal carries a minted identity:
    # backends answer internal callers (the run engine calls sessions and files) directly.
    backend_channel: grpc.aio.Channel | None = None


@dataclass
class Finding:
    kind: str  # status | transport | log | health | half-written
    method: str
    status: str = ""
    principal: str = ""
    input: str = ""
    detail: str = ""
    count: int = 1  # how many cases ended the same way

    def line(self) -> str:
        parts = [f"[{self.kind}] {self.method}" + (f" ×{self.count}" if self.count > 1 else "")]
        if self.status:
            parts.append(self.status)
        if self.principal:
            parts.append(f"as {self.principal}")
        if self.input:
            parts.append(f"input={self.input}")
        if self.detail:
            parts.append(f"detail={self.detail}")
        return " ".join(parts)


@dataclass
class Report:
    tally: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    findings: list[Finding] = field(default_factory=list)
    unreachable: dict[str, str] = field(default_factory=dict)
    # The most frequent error messages per method: what stopped the cases (shown with -v).
    reasons: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    reason_inputs: dict[str, str] = field(default_factory=dict)  # reason → the first input that met it
    planned: int = 0
    code_path: str = ""

    def add(self, finding: Finding, cap_per_kind: int = 4) -> None:
        """Keeps a few distinct examples per (kind, method, status); repeats are counted."""
        same = [f for f in self.findings if (f.kind, f.method, f.status) == (finding.kind, finding.method, finding.status)]
        for f in same:
            if (f.input, f.detail[:120]) == (finding.input, finding.detail[:120]) or len(same) >= cap_per_kind:
                f.count += 1
                return
        self.findings.append(finding)

    def totals(self) -> Counter:
        out = Counter()
        for counts in self.tally.values():
            out.update(counts)
        return out

    def to_json(self) -> dict:
        return {"code_path": self.code_path, "planned": self.planned,
                "tally": {m: dict(c) for m, c in sorted(self.tally.items())}, "totals": dict(self.totals()),
                "findings": [f.__dict__ for f in self.findings],
                "reasons": {m: [(n, r, self.reason_inputs.get(f"{m} {r}", "")) for r, n in c.most_common(8)]
                            for m, c in sorted(self.reasons.items())}, "unreachable": self.unreachable}


REPORT = Report()


@dataclass
class Outcome:
    code: str
    details: str = ""
    responses: list[bytes] = field(default_factory=list)
    rich: bool = False  # carries a google.rpc.Status


class Fuzzer:
    def __init__(self, loop: Loop, processes: dict[str, ServiceProcess], routes: dict[str, Route],
                 principals: dict[str, Principal], pools: Pools, report: Report) -> None:
        self.loop = loop
        self.processes = processes
        self.routes = routes
        self.principals = principals
        self.pools = pools
        self.report = report
        self.root_lists: dict[str, list[tuple[MethodDescriptor, str]]] = defaultdict(list)  # service → lists
        self._health_channels: dict[str, grpc.aio.Channel] = {}

    # ---- building ---------------------------------------------------------------------

    def _resolver(self, principal: Principal):
        other = next((p.user for p in self.principals.values() if p.user != principal.user), principal.user)

        def resolve(value):
            if isinstance(value, PoolRef):
                user = principal.user if value.owner == "self" else other
                return self.pools.pick(user, value.key, value.index) or ""
            if isinstance(value, TokenMutation):
                token = self.pools.pick(principal.user, "page_token", value.index)
                return mutate_token(token or "", _WRONG_JSON_VALUES[value.replacement_index])
            return value

        return resolve

    def payloads(self, method: MethodDescriptor, case: Case) -> tuple[list[bytes], str]:
        if case.raw is not None:
            return list(case.raw), f"raw {describe(list(case.raw))}"
        resolve = self._resolver(self.principals[case.principal])
        messages = [build_message(method.input_type, spec, resolve) for spec in case.specs]
        return [m.SerializeToString() for m in messages], describe(list(case.specs) if len(case.specs) != 1
                                                                   else case.specs[0])

    # ---- calling ----------------------------------------------------------------------

    async def _call(self, channel: grpc.aio.Channel, method: MethodDescriptor, payloads: list[bytes],
                    metadata) -> Outcome:
        path = f"/{method.containing_service.full_name}/{method.name}"
        responses: list[bytes] = []
        try:
            if method.client_streaming:
                async def requests():
                    for p in payloads:
                        yield p

                if method.server_streaming:
                    call = channel.stream_stream(path)(requests(), metadata=metadata, timeout=STREAM_TIMEOUT)
                    await self._drain(call, responses)
                else:
                    responses.append(await channel.stream_unary(path)(requests(), metadata=metadata,
                                                                     timeout=UNARY_TIMEOUT))
            elif method.server_streaming:
                call = channel.unary_stream(path)(payloads[0], metadata=metadata, timeout=STREAM_TIMEOUT)
                if await self._drain(call, responses):
                    return Outcome("OK(stream cut by the client)", responses=responses)
            else:
                responses.append(await channel.unary_unary(path)(payloads[0], metadata=metadata, timeout=UNARY_TIMEOUT))
        except grpc.aio.AioRpcError as exc:
            trailers = exc.trailing_metadata() or ()
            rich = any(k == "grpc-status-details-bin" for k, _ in trailers)
            return Outcome(exc.code().name, exc.details() or "", responses, rich)
        return Outcome("OK", responses=responses)

    @staticmethod
    async def _drain(call, responses: list[bytes]) -> bool:
        """Reads a server stream to its end; True when it had to cut a very long one."""
        async for item in call:
            responses.append(item)
            if len(responses) >= MAX_STREAM_MESSAGES:
                call.cancel()
                return True
        return False

    async def _batch(self, route: Route, method: MethodDescriptor, prepared) -> list[Outcome]:
        async def one(principal, payloads):
            channel = route.backend_channel if principal.internal and route.backend_channel else route.channel
            return await self._call(channel, method, payloads, principal.metadata())

        return await asyncio.gather(*(one(self.principals[p], payloads) for p, payloads, _ in prepared))

    def run_batch(self, method: MethodDescriptor, cases: list[Case]) -> None:
        route = self.routes[method.containing_service.full_name]
        name = method_id(method)
        prepared = []
        for case in cases:
            payloads, text = self.payloads(method, case)
            prepared.append((case.principal, payloads, text))
        before = self._snapshot(method) if self._checks_rows(method) else None
        outcomes = self.loop.run(self._batch(route, method, prepared))
        response_class = message_factory.GetMessageClass(method.output_type)
        checked_user = self.principals[route.principals[0]].user
        returned: set[str] = set()
        for (principal_name, _, text), outcome in zip(prepared, outcomes):
            principal = self.principals[principal_name]
            self.report.tally[name][outcome.code] += 1
            if outcome.details:
                reason = f"{outcome.code}: {outcome.details[:90]}"
                self.report.reasons[name][reason] += 1
                self.report.reason_inputs.setdefault(f"{name} {reason}", text)
            if outcome.code in BAD_CODES:
                self.report.add(Finding("status", name, outcome.code, principal_name, text, outcome.details[:300]))
            elif BROKEN_TRANSPORT.search(outcome.details):
                self.report.add(Finding("transport", name, outcome.code, principal_name, text, outcome.details[:300]))
            for raw in outcome.responses:
                try:
                    response = response_class.FromString(raw)
                except Exception as exc:  # noqa: BLE001 - a reply we cannot read is itself a finding
                    self.report.add(Finding("response", name, outcome.code, principal_name, text, repr(exc)[:200]))
                    continue
                harvest(response, principal.user, self.pools)
                if outcome.code.startswith("OK") and principal.user == checked_user:
                    collect = Pools()
                    harvest(response, principal.user, collect)
                    for ids in collect.by_user.get(principal.user, {}).values():
                        returned.update(ids)
        if before is not None:
            self._check_rows(method, before, returned)

    # ---- nothing half-written ------------------------------------------------------------

    def _checks_rows(self, method: MethodDescriptor) -> bool:
        from tests.fuzz.surface import creates

        return creates(method) and bool(self.root_lists.get(method.containing_service.full_name))

    def discover_root_lists(self) -> None:
        """The List methods of each service that answer an empty request: the rows a
        failed create must not leave behind show up there."""
        for service, route in self.routes.items():
            service_desc = next(iter({m.containing_service for m in self._methods_of(service)}), None)
            if service_desc is None:
                continue
            for method in service_desc.methods:
                if not method.name.startswith("List") or method.client_streaming or method.server_streaming:
                    continue
                principal = self._row_checker(route)
                if not isinstance(self._list_ids(method, principal), str):
                    self.root_lists[service].append((method, principal))

    def _methods_of(self, service: str):
        from tests.fuzz.surface import all_methods

        return [m for m in all_methods() if m.containing_service.full_name == service]

    def _row_checker(self, route: Route) -> str:
        # The first-named principal of a route is the one whose rows are checked.
        return route.principals[0]

    def _list_ids(self, method: MethodDescriptor, principal_name: str) -> set[str] | str:
        """The ids on the first page of a list, or the status it answered instead."""
        request = message_factory.GetMessageClass(method.input_type)()
        if "page_size" in method.input_type.fields_by_name:
            request.page_size = 100
        route = self.routes[method.containing_service.full_name]
        outcome = self.loop.run(self._call(route.channel, method, [request.SerializeToString()],
                                           self.principals[principal_name].metadata()))
        if outcome.code != "OK":
            return f"{outcome.code}: {outcome.details[:150]}"
        response = message_factory.GetMessageClass(method.output_type).FromString(outcome.responses[0])
        collect = Pools()
        harvest(response, "u", collect)
        return set(collect.by_user.get("u", {}).get("*", []))

    def _snapshot(self, method: MethodDescriptor) -> dict[str, set[str] | str]:
        return {lister.name: self._list_ids(lister, principal)
                for lister, principal in self.root_lists[method.containing_service.full_name]}

    def _check_rows(self, method: MethodDescriptor, before: dict[str, set[str] | str], returned: set[str]) -> None:
        after = self._snapshot(method)
        for lister, ids in after.items():
            if isinstance(ids, str):
                # The list worked before these calls: whatever they stored broke it.
                if not isinstance(before.get(lister), str):
                    self.report.add(Finding("half-written", method_id(method),
                                            detail=f"{lister} answers {ids} after these calls"))
                continue
            previous = before.get(lister)
            unexplained = ids - (previous if isinstance(previous, set) else set()) - returned
            if unexplained:
                self.report.add(Finding("half-written", method_id(method),
                                        detail=f"{lister} shows rows no successful call returned: "
                                               f"{sorted(unexplained)[:5]}"))

    # ---- health and logs ----------------------------------------------------------------

    def check_health(self, where: str) -> list[str]:
        async def check() -> list[str]:
            problems = []
            for process in self.processes.values():
                if process.popen.poll() is not None:
                    problems.append(f"{process.name} exited with {process.popen.returncode}")
                    continue
                channel = self._health_channels.get(process.name)
                if channel is None:
                    channel = grpc.aio.insecure_channel(f"127.0.0.1:{process.port}", options=CHANNEL_OPTIONS)
                    self._health_channels[process.name] = channel
                # A service no process serves (UNREACHABLE) is reported NOT_SERVING by the gateway.
                for service in ["", *(s for s in process.services if s in self.routes)]:
                    status = await health_status(channel, service)
                    if status != "SERVING":
                        problems.append(f"{process.name} health({service or 'overall'}) = {status}")
            return problems

        problems = self.loop.run(check())
        for problem in problems:
            self.report.add(Finding("health", where, detail=problem))
        return problems

    def check_logs(self, where: str) -> list[str]:
        excerpts = []
        for process in self.processes.values():
            for line in process.new_log().splitlines():
                if SUSPICIOUS_LOG.search(line) and not any(p.search(line) for p in ALLOWED_LOG):
                    excerpt = _log_excerpt(line)
                    excerpts.append(f"{process.name}: {excerpt}")
                    self.report.add(Finding("log", where, principal=process.name, detail=excerpt))
        return excerpts


def _log_excerpt(line: str) -> str:
    """The message and the last line of the traceback of a JSON log line (or the raw line)."""
    try:
        entry = json.loads(line)
    except ValueError:
        return line[:300]
    text = entry.get("message", "")
    if entry.get("exception"):
        text += " | " + entry["exception"].strip().splitlines()[-1]
    return f"{entry.get('logger', '')}: {text}"[:400]
