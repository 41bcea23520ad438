"""`parley`: Parley from the terminal.

    parley chat [-m MODEL] [-s SYSTEM] [PROMPT ...]   stream an answer (no prompt: a conversation)
    parley chat -a ASSISTANT [--session ID] [PROMPT ...]   a conversation with an assistant, kept in a session
    parley assistants create NAME -m MODEL [...] | list | show ID | update ID [...] | delete ID
    parley run -a ASSISTANT [-s SESSION] PROMPT ...   run an assistant, streaming its answer, tool calls and sources
    parley runs list -s SESSION | show ID | steps ID | cancel ID | watch ID [--after N] | submit ID CALL=OUTPUT ...
    parley models [--provider P] [--all]
    parley sessions list | create [TITLE] | show ID | delete ID | export ID [--markdown]
    parley files upload PATH [--purpose P] | list | delete ID
    parley keys create NAME --scope S [--scope S ...] [--ttl-days N] | list | revoke ID | rotate ID [--grace-hours H]
    parley usage [--days N] [--by model|day|user ...]
    parley audit list [--kind K ...] [--user U] [--actor A] [--since 7d|ISO] [--until ...] [--service S] [--limit N]
    parley audit export [the same filters] > audit.jsonl      every matching event as JSON lines
    parley admin delete-user USER_ID [--yes]                  remove a user's data everywhere (asks first)

The gateway comes from --target or PARLEY_TARGET (default 127.0.0.1:50051), the credential
from --api-key, PARLEY_API_KEY or the development key `make run` writes to
.parley/dev-api-key. Add --json for machine-readable output.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from datetime import datetime, timedelta, timezone

import grpc
from google.protobuf.json_format import MessageToDict

from parley.admin.v1 import audit_pb2
from parley.cli import _assistants
from parley.client import ParleyClient, error_details, user_message
from parley.files.v1 import files_pb2
from parley.gateway.v1 import gateway_pb2
from parley.llm.v1 import llm_pb2
from parley.sessions.v1 import sessions_pb2

PURPOSES = {"assistants": files_pb2.FILE_PURPOSE_ASSISTANTS, "vision": files_pb2.FILE_PURPOSE_VISION}
GROUP_BY = {"user": llm_pb2.USAGE_GROUP_BY_USER, "model": llm_pb2.USAGE_GROUP_BY_MODEL,
            "day": llm_pb2.USAGE_GROUP_BY_DAY}


def _out(args, message=None, *, text: str = "") -> None:
    if args.json and message is not None:
        import json

        print(json.dumps(MessageToDict(message, preserving_proto_field_name=True), indent=2))
    elif text:
        print(text)


def _time(stamp) -> str:
    if not stamp.seconds:
        return "-"
    return stamp.ToDatetime(tzinfo=timezone.utc).strftime("%Y-%m-%d %H:%M")


class ProgressBar:
    """A one-line progress bar on stderr (only when stderr is a terminal, or when forced)."""

    def __init__(self, label: str, total: int, *, enabled: bool | None = None, width: int = 30) -> None:
        self._label, self._total, self._width = label, max(total, 1), width
        self._enabled = sys.stderr.isatty() if enabled is None else enabled
        self._start = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        if not self._enabled:
            return
        fraction = min(done / max(total, 1), 1.0)
        filled = int(fraction * self._width)
        rate = done / max(time.monotonic() - self._start, 1e-6) / 1e6
        sys.stderr.write(f"\r{self._label} [{'#' * filled}{'.' * (self._width - filled)}] "
                         f"{fraction * 100:5.1f}% {done / 1e6:.1f}/{total / 1e6:.1f} MB {rate:.1f} MB/s")
        sys.stderr.flush()

    def close(self) -> None:
        if self._enabled:
            sys.stderr.write("\n")


async def chat(client: ParleyClient, args) -> int:
    if args.assistant:
        return await _assistants.chat(client, args)
    history = [llm_pb2.ChatMessage(role=llm_pb2.ROLE_SYSTEM, content=[llm_pb2.ContentPart(text=args.system)])] \
        if args.system else []
    prompts = [" ".join(args.prompt)] if args.prompt else None
    interactive = prompts is None and sys.stdin.isatty()
    if prompts is None and not interactive:
        prompts = [sys.stdin.read()]
    while True:
        if interactive:
            try:
                prompt = input("you> ")
            except EOFError:
                print()
                return 0
            if not prompt.strip():
                continue
        elif prompts:
            prompt = prompts.pop(0)
        else:
            return 0
        history.append(user_message(prompt))
        stream = client.llm.stream(history, model=args.model, timeout=args.timeout)
        pieces = []
        async for text in stream:
            pieces.append(text)
            sys.stdout.write(text)
            sys.stdout.flush()
        print()
        history.append(llm_pb2.ChatMessage(role=llm_pb2.ROLE_ASSISTANT,
                                           content=[llm_pb2.ContentPart(text="".join(pieces))]))
        if stream.finish is not None and not args.quiet:
            usage = stream.finish.usage
            print(f"[{stream.finish.model}: {usage.input_tokens} in, {usage.output_tokens} out, "
                  f"${stream.finish.cost_usd:.6f}]", file=sys.stderr)


async def models(client: ParleyClient, args) -> int:
    found = await client.llm.list_models(provider=args.provider, include_unconfigured=args.all)
    if args.json:
        for model in found:
            _out(args, model)
        return 0
    for model in found:
        print(f"{model.id:<40} {model.display_name}")
    return 0


async def sessions(client: ParleyClient, args) -> int:
    if args.action == "list":
        page = await client.sessions.list(page_size=args.limit)
        if args.json:
            _out(args, page)
        for s in [] if args.json else page.sessions:
            print(f"{s.id}  {_time(s.create_time)}  {s.message_count:>4} msgs  {s.title}")
    elif args.action == "create":
        session = await client.sessions.create(" ".join(args.rest))
        _out(args, session, text=session.id)
    elif args.action == "show":
        session = await client.sessions.get(args.rest[0])
        if args.json:
            _out(args, session)
            return 0
        print(f"{session.id}  {session.title}")
        async for message in client.sessions.messages(session.id):
            role = sessions_pb2.Role.Name(message.role).removeprefix("ROLE_").lower()
            print(f"{role}: " + "".join(part.text for part in message.content))
    elif args.action == "delete":
        await client.sessions.delete(args.rest[0])
    elif args.action == "export":
        sys.stdout.buffer.write(await client.sessions.export(args.rest[0], markdown=args.markdown))
    return 0


async def files(client: ParleyClient, args) -> int:
    if args.action == "upload":
        from pathlib import Path

        path = Path(args.rest[0])
        bar = ProgressBar(path.name, path.stat().st_size, enabled=True if args.progress else None)
        try:
            uploaded = await client.files.upload(path, purpose=PURPOSES[args.purpose], progress=bar)
        finally:
            bar.close()
        _out(args, uploaded, text=uploaded.id)
    elif args.action == "list":
        page = await client.files.list(page_size=args.limit)
        if args.json:
            _out(args, page)
        for f in [] if args.json else page.files:
            print(f"{f.id}  {f.size_bytes:>10}  {f.filename}")
    elif args.action == "delete":
        await client.files.delete(args.rest[0])
    return 0


async def keys(client: ParleyClient, args) -> int:
    if args.action == "create":
        created = await client.keys.create(
            " ".join(args.rest), args.scope or ["llm", "sessions", "files", "assistants"],
            ttl=timedelta(days=args.ttl_days) if args.ttl_days else None,
            requests_per_minute=args.rpm, redact_prompt_pii=args.redact_pii)
        if args.json:
            _out(args, created)
        else:
            print(created.secret)
            print(f"key {created.api_key.id}: store the secret now, it is not shown again", file=sys.stderr)
    elif args.action == "list":
        found = await client.keys.list()
        for key in found:
            if args.json:
                _out(args, key)
                continue
            scopes = ",".join(gateway_pb2.Scope.Name(s).removeprefix("SCOPE_").lower() for s in key.scopes)
            state = gateway_pb2.ApiKeyState.Name(key.state).removeprefix("API_KEY_STATE_").lower()
            print(f"{key.id}  {key.prefix}…  {state:<8} {scopes:<28} used {_time(key.last_used_time)}  {key.name}")
    elif args.action == "revoke":
        _out(args, await client.keys.revoke(args.rest[0]), text="revoked")
    elif args.action == "rotate":
        rotated = await client.keys.rotate(args.rest[0], grace=timedelta(hours=args.grace_hours))
        if args.json:
            _out(args, rotated)
        else:
            print(rotated.secret)
            print(f"the old secret works until {_time(rotated.api_key.previous_secret_expire_time)}", file=sys.stderr)
    return 0


async def usage(client: ParleyClient, args) -> int:
    end = datetime.now(timezone.utc)
    report = await client.llm.get_usage(start=end - timedelta(days=args.days), end=end,
                                        group_by=[GROUP_BY[g] for g in args.by])
    if args.json:
        _out(args, report)
        return 0
    for row in [*report.rows, report.total]:
        day = _time(row.day_start_time)[:10] if row.HasField("day_start_time") else ""
        label = " ".join(filter(None, [row.user_id, row.model, day])) if row is not report.total else "total"
        print(f"{label:<50} {row.request_count:>8} calls {row.usage.total_tokens:>12} tokens ${row.cost_usd:.4f}")
    return 0


_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def moment(text: str) -> datetime:
    """`7d`, `24h`, `30m` (that long ago) or an ISO 8601 time (UTC unless it says otherwise)."""
    relative = _RELATIVE.match(text.strip())
    if relative:
        return datetime.now(timezone.utc) - timedelta(**{_UNITS[relative.group(2)]: float(relative.group(1))})
    try:
        parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a time: {text!r} (use e.g. 7d, 24h or 2025-01-31T12:00)") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _audit_filters(args) -> dict:
    return {"kinds": args.kind, "actor": args.actor, "subject": args.user, "since": args.since, "until": args.until,
            "services": args.service}


async def audit(client: ParleyClient, args) -> int:
    if args.action == "export":
        async for chunk in client.admin.export_audit_events(**_audit_filters(args)):
            sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()
        return 0
    async for event in client.admin.audit_events(limit=args.limit, **_audit_filters(args)):
        if args.json:
            _out(args, event)
            continue
        outcome = audit_pb2.AuditOutcome.Name(event.outcome).removeprefix("AUDIT_OUTCOME_").lower()
        who = event.actor_user_id or "-"
        if event.subject_user_id and event.subject_user_id != event.actor_user_id:
            who += f" -> {event.subject_user_id}"
        stamp = event.event_time.ToDatetime(tzinfo=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        extra = " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in
                         MessageToDict(event.details).items())
        print(f"{stamp}  {event.service:<9} {event.kind:<22} {outcome:<8} {who:<32} {event.resource_id or '-'}"
              f"{'  ' + event.source if event.source else ''}{'  ' + extra if extra else ''}")
    return 0


async def admin(client: ParleyClient, args) -> int:
    user_id = args.rest[0]
    if not args.yes:
        if not sys.stdin.isatty():
            print("parley admin delete-user: refusing without --yes when not on a terminal", file=sys.stderr)
            return 2
        answer = input(f"Delete every session, run, file, vector, sandbox, budget, usage record and API key of "
                       f"{user_id!r} in every service? This cannot be undone. Type the user id to confirm: ")
        if answer.strip() != user_id:
            print("not deleted", file=sys.stderr)
            return 1
    reply = await client.admin.delete_user_data(user_id)
    if args.json:
        _out(args, reply)
        return 0
    for deletion in reply.deletions:
        if deletion.not_configured:
            print(f"{deletion.service:<11} not configured on this gateway: nothing deleted there")
            continue
        removed = ", ".join(f"{k} {v}" for k, v in sorted(deletion.removed.items())) or "nothing"
        kept = f" (kept: {', '.join(deletion.kept)})" if deletion.kept else ""
        print(f"{deletion.service:<11} {removed}{kept}")
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="parley", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    root.add_argument("--target", help="gateway address (PARLEY_TARGET)")
    root.add_argument("--api-key", help="API key or JWT (PARLEY_API_KEY, .parley/dev-api-key)")
    root.add_argument("--tls", action="store_true", help="connect with TLS")
    root.add_argument("--json", action="store_true", help="print JSON")
    root.add_argument("--timeout", type=float, default=None, help="seconds per call")
    commands = root.add_subparsers(dest="command", required=True)

    c = commands.add_parser("chat", help="stream an answer")
    c.add_argument("prompt", nargs="*")
    c.add_argument("-m", "--model", default="")
    c.add_argument("-s", "--system", default="")
    c.add_argument("-q", "--quiet", action="store_true", help="no usage line")
    c.add_argument("-a", "--assistant", default="", help="talk to this assistant (each prompt is a run)")
    c.add_argument("--session", default="", help="with -a: the session to continue (default: a new one)")
    c.set_defaults(run=chat)

    m = commands.add_parser("models", help="list models")
    m.add_argument("--provider", default="")
    m.add_argument("--all", action="store_true", help="also models without a configured provider")
    m.set_defaults(run=models)

    s = commands.add_parser("sessions", help="conversations")
    s.add_argument("action", choices=["list", "create", "show", "delete", "export"])
    s.add_argument("rest", nargs="*")
    s.add_argument("--limit", type=int, default=20)
    s.add_argument("--markdown", action="store_true")
    s.set_defaults(run=sessions)

    f = commands.add_parser("files", help="files")
    f.add_argument("action", choices=["upload", "list", "delete"])
    f.add_argument("rest", nargs="*")
    f.add_argument("--purpose", choices=sorted(PURPOSES), default="assistants")
    f.add_argument("--limit", type=int, default=20)
    f.add_argument("--progress", action="store_true", help="show the progress bar even when not on a terminal")
    f.set_defaults(run=files)

    k = commands.add_parser("keys", help="API keys")
    k.add_argument("action", choices=["create", "list", "revoke", "rotate"])
    k.add_argument("rest", nargs="*")
    k.add_argument("--scope", action="append", choices=["llm", "sessions", "files", "assistants", "admin"])
    k.add_argument("--ttl-days", type=float, default=None)
    k.add_argument("--rpm", type=int, default=0, help="requests per minute (0: the default)")
    k.add_argument("--redact-pii", action="store_true", help="redact PII from prompts sent with this key")
    k.add_argument("--grace-hours", type=float, default=24.0)
    k.set_defaults(run=keys)

    u = commands.add_parser("usage", help="token usage and cost")
    u.add_argument("--days", type=float, default=30)
    u.add_argument("--by", action="append", choices=sorted(GROUP_BY), default=[])
    u.set_defaults(run=usage)

    au = commands.add_parser("audit", help="the audit log of every service (admin keys)")
    au.add_argument("action", choices=["list", "export"])
    au.add_argument("--kind", action="append", default=[], help="e.g. auth.failed, api_key.created (repeatable)")
    au.add_argument("--user", default="", help="events about this user (the subject)")
    au.add_argument("--actor", default="", help="events done by this user")
    au.add_argument("--since", type=moment, default=None, help="7d, 24h, 30m or an ISO time")
    au.add_argument("--until", type=moment, default=None)
    au.add_argument("--service", action="append", default=[], choices=["gateway", "llm", "sessions", "files"])
    au.add_argument("--limit", type=int, default=100, help="list: at most this many events (newest first)")
    au.set_defaults(run=audit)

    ad = commands.add_parser("admin", help="administration (admin keys)")
    ad.add_argument("action", choices=["delete-user"])
    ad.add_argument("rest", nargs="*")
    ad.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    ad.set_defaults(run=admin)

    _assistants.register(commands)
    return root


async def _run(args) -> int:
    async with ParleyClient(args.target, args.api_key, tls=args.tls, timeout=args.timeout) as client:
        return await args.run(client, args)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    needs = {"sessions": ("show", "delete", "export"), "files": ("upload", "delete"), "keys": ("revoke", "rotate"),
             "admin": ("delete-user",), **_assistants.NEEDS_ARGUMENT}
    if args.command in needs and args.action in needs[args.command] and not args.rest:
        print(f"parley {args.command} {args.action}: an argument is missing", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_run(args))
    except grpc.aio.AioRpcError as exc:
        details = error_details(exc)
        hint = f" (retry in {details.retry_after:.1f}s)" if details.retry_after else ""
        print(f"parley: {details.code.name}: {details.message}{hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        print(f"parley: {exc}", file=sys.stderr)
        return 1
