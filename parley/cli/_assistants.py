"""The assistants commands of `parley`:

    parley assistants create NAME -m MODEL [-i TEXT | --instructions-file F] [--functions F.json]
                                  [--file-search] [--vector-store ID ...] | list | show ID
                                  | update ID [same options] | delete ID
    parley run -a ASSISTANT [-s SESSION] [--var K=V ...] [--busy queue|reject|cancel_active] PROMPT ...
    parley runs list -s SESSION | show RUN | steps RUN | cancel RUN | watch RUN [--after N]
                | submit RUN CALL_ID=OUTPUT ...
    parley chat -a ASSISTANT [--session SESSION]     a conversation kept in a session

`run`, `chat -a` and `runs watch` stream the answer to stdout, then its sources (citations
with file, page and quote); tool calls and a status line go to stderr. A run that stops for
its functions' outputs prints the pending calls and exits with status 3 (answer them with
`parley runs submit`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from google.protobuf.json_format import MessageToDict

from parley.assistants.v1 import assistants_pb2
from parley.client import (
    Citation,
    ParleyClient,
    RunErrored,
    RunStatus,
    RunStatusChanged,
    RunStream,
    StepUpdated,
    TextDelta,
    file_search_tool,
    function_tool,
)

EXIT_REQUIRES_ACTION = 3
QUOTE_CHARS = 160


def _dict(message) -> dict:
    return MessageToDict(message, preserving_proto_field_name=True)


def _print_json(message) -> None:
    print(json.dumps(_dict(message), indent=2))


def _pairs(values: list[str] | None, flag: str) -> dict[str, str]:
    pairs = {}
    for value in values or []:
        key, sep, rest = value.partition("=")
        if not sep or not key:
            raise SystemExit(f"parley: {flag} takes KEY=VALUE, got {value!r}")
        pairs[key] = rest
    return pairs


def _time(stamp) -> str:
    from datetime import timezone

    return stamp.ToDatetime(tzinfo=timezone.utc).strftime("%Y-%m-%d %H:%M:%S") if stamp.seconds else "-"


def _status(value: int) -> str:
    return RunStatus.of(value).label


def _one_line(text: str, limit: int = QUOTE_CHARS) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit - 1] + "…"


# ---- rendering a run -------------------------------------------------------------------------


def _show_call(detail: assistants_pb2.ToolCallDetail) -> str:
    kind = detail.WhichOneof("call")
    if kind == "function":
        cached = " (cached)" if detail.function.cached else ""
        line = f"[function {detail.function.name}] {detail.function.arguments or '{}'}"
        return line + (f" → {_one_line(detail.function.output, 200)}{cached}" if detail.function.output else "")
    if kind == "file_search":
        search = detail.file_search
        return f"[file_search] {search.query!r} → {len(search.results)} results"
    if kind == "code_interpreter":
        return f"[code_interpreter] {_one_line(detail.code_interpreter.input, 200)}"
    return f"[tool {detail.id}]"


def _call_done(detail: assistants_pb2.ToolCallDetail) -> bool:
    """Whether a call in a step still in progress already has its result."""
    kind = detail.WhichOneof("call")
    if kind == "function":
        return bool(detail.function.output)
    if kind == "file_search":
        return bool(detail.file_search.results)
    if kind == "code_interpreter":
        return bool(detail.code_interpreter.outputs)
    return False


def _sources(citations: list[Citation]) -> list[str]:
    lines, seen = [], set()
    for citation in citations:
        key = (citation.marker, citation.file_id, citation.quote)
        if key in seen:
            continue
        seen.add(key)
        page = f", page {citation.page}" if citation.page else ""
        lines.append(f"  {citation.marker or '[' + str(len(lines) + 1) + ']'} {citation.filename}{page}: "
                     f"\"{_one_line(citation.quote)}\"")
    return lines


async def render(stream: RunStream, args, *, out=None, err=None) -> int:
    """Streams a run to the terminal; returns the exit status it deserves."""
    out, err = out or sys.stdout, err or sys.stderr
    if args.json:
        async for event in stream:
            print(json.dumps(_dict(event.raw)), file=out, flush=True)
        return _exit_status(stream)
    shown: set[str] = set()
    wrote_text = False
    async for event in stream:
        if isinstance(event, TextDelta):
            out.write(event.text)
            out.flush()
            wrote_text = True
        elif isinstance(event, StepUpdated) and event.step.WhichOneof("step_details") == "tool_calls":
            finished = event.step.status != assistants_pb2.RUN_STEP_STATUS_IN_PROGRESS
            for detail in event.step.tool_calls.tool_calls:
                if detail.id not in shown and (finished or _call_done(detail)):
                    shown.add(detail.id)
                    print(_show_call(detail), file=err, flush=True)
        elif isinstance(event, RunErrored):
            print(f"error ({event.code}): {event.message}", file=err, flush=True)
        elif isinstance(event, RunStatusChanged) and event.status == RunStatus.REQUIRES_ACTION:
            for call in event.required_tool_calls:
                print(f"[function {call.name}] {call.arguments or '{}'} → waiting for output (call {call.id})",
                      file=err, flush=True)
    if wrote_text:
        out.write("\n")
    sources = _sources(stream.citations)
    if sources:
        print("Sources:", file=out)
        print("\n".join(sources), file=out)
    out.flush()
    run = stream.run
    if not args.quiet:
        usage = stream.usage if stream.done else None
        tail = f", {usage.prompt_tokens} in, {usage.completion_tokens} out, ${usage.cost_usd:.6f}" if usage else ""
        reason = ""
        if run is not None and run.HasField("last_error") and run.last_error.message:
            reason = f": {run.last_error.message}"
        elif run is not None and run.HasField("incomplete_details"):
            reason = ": " + assistants_pb2.IncompleteReason.Name(run.incomplete_details.reason) \
                .removeprefix("INCOMPLETE_REASON_").lower()
        print(f"[run {stream.run_id} {stream.status.label}{reason}{tail}]", file=err, flush=True)
    if stream.status == RunStatus.REQUIRES_ACTION:
        print(f"answer with: parley runs submit {stream.run_id} "
              + " ".join(f"{c.id}=OUTPUT" for c in stream.required_tool_calls), file=err)
    return _exit_status(stream)


def _exit_status(stream: RunStream) -> int:
    if stream.status == RunStatus.REQUIRES_ACTION:
        return EXIT_REQUIRES_ACTION
    return 0 if stream.status in (RunStatus.COMPLETED, RunStatus.INCOMPLETE) else 1


# ---- assistants ------------------------------------------------------------------------------


def _function_specs(path: str) -> list[assistants_pb2.Tool]:
    """Functions from a JSON file: one spec or a list, each {"name", "description",
    "parameters", "cache_ttl_seconds"} or the OpenAI form {"type": "function", "function": {...}}."""
    loaded = json.loads(Path(path).read_text())
    specs = loaded if isinstance(loaded, list) else [loaded]
    tools = []
    for spec in specs:
        spec = spec.get("function", spec) if isinstance(spec, dict) else spec
        if not isinstance(spec, dict) or not spec.get("name"):
            raise SystemExit(f"parley: {path}: each function needs a name")
        tools.append(function_tool(spec["name"], description=spec.get("description", ""),
                                   parameters=spec.get("parameters"), strict=bool(spec.get("strict", False)),
                                   cache_ttl=spec.get("cache_ttl_seconds")))
    return tools


def _instructions(args) -> str | None:
    if args.instructions_file:
        return Path(args.instructions_file).read_text()
    return args.instructions


def _tools_of(args) -> list[assistants_pb2.Tool] | None:
    if not (args.functions or args.file_search or args.no_tools):
        return None
    tools = []
    for path in args.functions or []:
        tools.extend(_function_specs(path))
    if args.file_search:
        tools.append(file_search_tool())
    return tools


def _show_assistant(assistant: assistants_pb2.Assistant) -> None:
    print(f"{assistant.id}  {assistant.name}")
    print(f"  model: {assistant.model}")
    if assistant.description:
        print(f"  description: {assistant.description}")
    for tool in assistant.tools:
        kind = tool.WhichOneof("tool")
        name = f" {tool.function.name}" if kind == "function" else ""
        print(f"  tool: {kind}{name}")
    stores = list(assistant.tool_resources.file_search.vector_store_ids)
    if stores:
        print(f"  vector stores: {', '.join(stores)}")
    if assistant.HasField("temperature"):
        print(f"  temperature: {assistant.temperature}")
    for key, value in sorted(assistant.metadata.items()):
        print(f"  metadata {key}: {value}")
    if assistant.instructions:
        print("  instructions:")
        for line in assistant.instructions.splitlines():
            print(f"    {line}")


async def assistants(client: ParleyClient, args) -> int:
    action = args.action
    if action == "create":
        tools = _tools_of(args) or []
        created = await client.assistants.create(
            " ".join(args.rest), model=args.model or "", instructions=_instructions(args) or "",
            description=args.description or "", tools=tools, vector_store_ids=args.vector_store or (),
            temperature=args.temperature, metadata=_pairs(args.metadata, "--metadata"))
        if args.json:
            _print_json(created)
        else:
            print(created.id)
    elif action == "list":
        page = await client.assistants.list(page_size=args.limit)
        if args.json:
            _print_json(page)
            return 0
        for a in page.assistants:
            print(f"{a.id}  {_time(a.create_time)}  {a.model:<32} {a.name}")
    elif action == "show":
        assistant = await client.assistants.get(args.rest[0])
        _print_json(assistant) if args.json else _show_assistant(assistant)
    elif action == "update":
        fields = {}
        if args.name is not None:
            fields["name"] = args.name
        if args.model:
            fields["model"] = args.model
        if (instructions := _instructions(args)) is not None:
            fields["instructions"] = instructions
        if args.description is not None:
            fields["description"] = args.description
        if args.temperature is not None:
            fields["temperature"] = args.temperature
        if args.metadata:
            fields["metadata"] = _pairs(args.metadata, "--metadata")
        tools = _tools_of(args)
        if not fields and tools is None and args.vector_store is None:
            print("parley assistants update: nothing to change", file=sys.stderr)
            return 2
        updated = await client.assistants.update(args.rest[0], tools=tools, vector_store_ids=args.vector_store,
                                                 **fields)
        _print_json(updated) if args.json else _show_assistant(updated)
    elif action == "delete":
        await client.assistants.delete(args.rest[0])
        if not args.json:
            print("deleted")
    return 0


# ---- runs ------------------------------------------------------------------------------------


def _run_options(args) -> dict:
    options = {"variables": _pairs(args.var, "--var"), "metadata": _pairs(args.metadata, "--metadata")}
    if args.busy:
        options["busy_session"] = args.busy
    if args.model:
        options["model"] = args.model
    if args.instructions:
        options["additional_instructions"] = args.instructions
    if args.max_prompt_tokens:
        options["max_prompt_tokens"] = args.max_prompt_tokens
    if args.max_completion_tokens:
        options["max_completion_tokens"] = args.max_completion_tokens
    if args.file:
        options["file_ids"] = args.file
    return options


async def run(client: ParleyClient, args) -> int:
    prompt = " ".join(args.prompt) if args.prompt else sys.stdin.read()
    if not prompt.strip():
        print("parley run: a prompt is missing", file=sys.stderr)
        return 2
    stream = client.assistants.stream_run(args.assistant, prompt, session_id=args.session or "",
                                          session_title=_one_line(prompt, 60), timeout=args.timeout,
                                          **_run_options(args))
    status = await render(stream, args)
    if not args.session and stream.session_id and not args.quiet and not args.json:
        print(f"[session {stream.session_id}: continue with -s {stream.session_id}]", file=sys.stderr)
    return status


def _show_run(run: assistants_pb2.Run) -> None:
    print(f"{run.id}  {_status(run.status)}")
    print(f"  session: {run.session_id}")
    print(f"  assistant: {run.assistant_id}")
    print(f"  model: {run.model}")
    print(f"  created: {_time(run.create_time)}  started: {_time(run.start_time)}")
    for label, stamp in (("completed", run.complete_time), ("cancelled", run.cancel_time),
                         ("failed", run.fail_time)):
        if stamp.seconds:
            print(f"  {label}: {_time(stamp)}")
    if run.HasField("last_error") and run.last_error.message:
        code = assistants_pb2.RunErrorCode.Name(run.last_error.code).removeprefix("RUN_ERROR_CODE_").lower()
        print(f"  error ({code}): {run.last_error.message}")
    if run.HasField("incomplete_details"):
        reason = assistants_pb2.IncompleteReason.Name(run.incomplete_details.reason)
        print(f"  incomplete: {reason.removeprefix('INCOMPLETE_REASON_').lower()}")
    for call in run.required_action.submit_tool_outputs.tool_calls:
        print(f"  waiting for: {call.id} {call.name}({call.arguments})")
    usage = run.usage
    print(f"  usage: {usage.prompt_tokens} in, {usage.completion_tokens} out, ${usage.cost_usd:.6f}")
    print(f"  events: {run.last_sequence}")


def _show_step(step: assistants_pb2.RunStep) -> None:
    kind = assistants_pb2.RunStepType.Name(step.type).removeprefix("RUN_STEP_TYPE_").lower()
    status = assistants_pb2.RunStepStatus.Name(step.status).removeprefix("RUN_STEP_STATUS_").lower()
    usage = f"{step.usage.prompt_tokens} in, {step.usage.completion_tokens} out"
    print(f"{step.id}  {kind:<16} {status:<11} {usage}")
    if step.WhichOneof("step_details") == "tool_calls":
        for detail in step.tool_calls.tool_calls:
            print(f"  {_show_call(detail)}")
            if detail.WhichOneof("call") == "file_search":
                for result in detail.file_search.results:
                    page = f" page {result.page}" if result.page else ""
                    print(f"    {result.score:.3f} {result.filename}{page}: \"{_one_line(result.text, 100)}\"")
    elif step.WhichOneof("step_details") == "message_creation":
        details = step.message_creation
        print(f"  message: {details.message_id or '-'}")
        for annotation in details.annotations:
            if annotation.WhichOneof("annotation") == "file_citation":
                source = annotation.file_citation
                page = f", page {source.page}" if source.page else ""
                print(f"  {annotation.text} {source.filename}{page}: \"{_one_line(source.quote, 100)}\"")


async def runs(client: ParleyClient, args) -> int:
    action = args.action
    if action == "list":
        if not args.session:
            print("parley runs list: --session (-s) is required", file=sys.stderr)
            return 2
        page = await client.assistants.list_runs(args.session, page_size=args.limit)
        if args.json:
            _print_json(page)
            return 0
        for r in page.runs:
            print(f"{r.id}  {_time(r.create_time)}  {_status(r.status):<15} {r.model:<28} "
                  f"{r.usage.total_tokens:>7} tokens")
        return 0
    run_id = args.rest[0]
    if action == "show":
        found = await client.assistants.get_run(run_id)
        _print_json(found) if args.json else _show_run(found)
    elif action == "steps":
        steps = await client.assistants.list_steps(run_id)
        for step in steps:
            _print_json(step) if args.json else _show_step(step)
    elif action == "cancel":
        cancelled = await client.assistants.cancel_run(run_id)
        _print_json(cancelled) if args.json else print(_status(cancelled.status))
    elif action == "watch":
        return await render(client.assistants.watch_run(run_id, after_sequence=args.after, timeout=args.timeout),
                            args)
    elif action == "submit":
        outputs = _pairs(args.rest[1:], "runs submit")
        if not outputs:
            print("parley runs submit: give CALL_ID=OUTPUT for each pending call", file=sys.stderr)
            return 2
        return await render(client.assistants.submit_tool_outputs(run_id, outputs, timeout=args.timeout), args)
    return 0


async def chat(client: ParleyClient, args) -> int:
    """A conversation with an assistant, kept in a session: each prompt is a run on it. On a
    terminal it reads prompts until EOF; piped, each non-empty line is one turn."""
    session_id = args.session
    if not session_id:
        assistant = await client.assistants.get(args.assistant)
        session = await client.sessions.create(f"chat with {assistant.name or assistant.id}",
                                               assistant_id=assistant.id)
        session_id = session.id
    if not args.quiet:
        print(f"[session {session_id}]", file=sys.stderr)
    if args.prompt:
        prompts = [" ".join(args.prompt)]
    elif sys.stdin.isatty():
        prompts = None
    else:
        prompts = [line for line in sys.stdin.read().splitlines() if line.strip()]
    status = 0
    while True:
        if prompts is None:
            try:
                prompt = input("you> ")
            except EOFError:
                print()
                return status
            if not prompt.strip():
                continue
        elif prompts:
            prompt = prompts.pop(0)
        else:
            return status
        stream = client.assistants.stream_run(args.assistant, prompt, session_id=session_id, timeout=args.timeout,
                                              busy_session="queue")
        status = await render(stream, args)
        if status == EXIT_REQUIRES_ACTION:
            return status


# ---- the parsers -----------------------------------------------------------------------------


def _assistant_options(p) -> None:
    p.add_argument("-m", "--model", default="")
    p.add_argument("-i", "--instructions", default=None)
    p.add_argument("--instructions-file", default=None)
    p.add_argument("--name", default=None, help="update: the new name")
    p.add_argument("--description", default=None)
    p.add_argument("--functions", action="append", metavar="FILE.json",
                   help="function tools from a JSON file (one spec or a list); repeatable")
    p.add_argument("--file-search", action="store_true", help="give it the file_search tool")
    p.add_argument("--no-tools", action="store_true", help="update: remove every tool (unless others are given)")
    p.add_argument("--vector-store", action="append", metavar="ID", help="a vector store file_search searches")
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--metadata", action="append", metavar="KEY=VALUE")


def _run_arguments(p) -> None:
    p.add_argument("--var", action="append", metavar="NAME=VALUE", help="a {{name}} of the instructions")
    p.add_argument("--busy", choices=["queue", "reject", "cancel_active"], default=None,
                   help="if the session has an active run (default: queue)")
    p.add_argument("--model", default="", help="override the assistant's model")
    p.add_argument("--instructions", default="", help="additional instructions for this run")
    p.add_argument("--max-prompt-tokens", type=int, default=0)
    p.add_argument("--max-completion-tokens", type=int, default=0)
    p.add_argument("--file", action="append", metavar="FILE_ID", help="attach an uploaded file to the prompt")
    p.add_argument("--metadata", action="append", metavar="KEY=VALUE")
    p.add_argument("-q", "--quiet", action="store_true", help="no status line")


def register(commands) -> None:
    a = commands.add_parser("assistants", help="assistants")
    a.add_argument("action", choices=["create", "list", "show", "update", "delete"])
    a.add_argument("rest", nargs="*")
    a.add_argument("--limit", type=int, default=20)
    _assistant_options(a)
    a.set_defaults(run=assistants)

    r = commands.add_parser("run", help="run an assistant on a prompt, streaming its answer")
    r.add_argument("prompt", nargs="*")
    r.add_argument("-a", "--assistant", required=True)
    r.add_argument("-s", "--session", default="", help="the session to continue (default: a new one)")
    _run_arguments(r)
    r.set_defaults(run=run)

    rs = commands.add_parser("runs", help="runs of assistants")
    rs.add_argument("action", choices=["list", "show", "steps", "cancel", "watch", "submit"])
    rs.add_argument("rest", nargs="*")
    rs.add_argument("-s", "--session", default="")
    rs.add_argument("--limit", type=int, default=20)
    rs.add_argument("--after", type=int, default=0, help="watch: events after this sequence number")
    rs.add_argument("-q", "--quiet", action="store_true", help="no status line")
    rs.set_defaults(run=runs)


NEEDS_ARGUMENT = {"assistants": ("show", "update", "delete"), "runs": ("show", "steps", "cancel", "watch", "submit")}
