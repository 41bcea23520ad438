"""Protobuf ⇄ domain conversions for the run store, and nothing else.

Resources travel into the domain as drafts (their populated top-level fields in protobuf
JSON form, by .proto field name, enums as numbers) and come back from stored bodies, so a
field added to parley.assistants.v1 is stored and returned without a change here.
"""

from __future__ import annotations

from datetime import timezone
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from parley.assistants.v1 import assistants_pb2 as pb
from services.runtime import errors
from services.sessions.convert import timestamp
from parley.runstore.v1 import runstore_service_pb2 as api
from services.sessions.runstore.models import (
    Assistant,
    Claim,
    Draft,
    FunctionResult,
    Lease,
    NewRunEvent,
    Run,
    RunChange,
    RunEvent,
    RunStep,
)

# Output-only, or carried outside the body: never taken from a request's body fields.
_EVENT_ENVELOPE = ("sequence", "run_id", "create_time")


def _to_dict(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True, use_integers_for_enums=True)


def _fields(message: Message, field: str) -> dict[str, Any]:
    """`message`'s populated fields; a value protobuf JSON cannot carry (a timestamp out of
    range) is the request's fault, named by its top-level field."""
    try:
        return _to_dict(message)
    except (json_format.Error, ValueError) as error:
        for bad, _ in message.ListFields():
            probe = type(message)()
            probe.CopyFrom(message)
            for other, _ in message.ListFields():
                if other.name != bad.name:
                    probe.ClearField(other.name)
            try:
                _to_dict(probe)
            except (json_format.Error, ValueError):
                raise errors.InvalidArgument.for_field(f"{field}.{bad.name}", "is not a valid value") from error
        raise errors.InvalidArgument.for_field(field, "is not a valid value") from error


def _parse(body: dict[str, Any], message: Message) -> Message:
    # Unknown fields are skipped so that rows written before a field was removed still read.
    return json_format.ParseDict(body, message, ignore_unknown_fields=True)


def draft(message: Message, field: str) -> Draft:
    """A request's resource (the request field `field`) as the domain reads it. Timestamps
    the store keeps as columns (a run's expire_time) become datetimes."""
    fields = _fields(message, field)
    if isinstance(message, pb.Run) and message.HasField("expire_time"):
        fields["expire_time"] = message.expire_time.ToDatetime(tzinfo=timezone.utc)
    return Draft(fields)


def new_events(events) -> list[NewRunEvent]:
    result = []
    for i, event in enumerate(events):
        body = _fields(event, f"events[{i}]")
        for name in _EVENT_ENVELOPE:
            body.pop(name, None)
        result.append(NewRunEvent(
            sequence=event.sequence,
            run_id=event.run_id,
            create_time=event.create_time.ToDatetime(tzinfo=timezone.utc) if event.HasField("create_time") else None,
            body=body,
        ))
    return result


def assistant_to_proto(assistant: Assistant) -> pb.Assistant:
    message = _parse(assistant.body, pb.Assistant())
    message.id = str(assistant.id)
    message.user_id = assistant.user_id
    message.create_time.CopyFrom(timestamp(assistant.create_time))
    message.update_time.CopyFrom(timestamp(assistant.update_time))
    return message


def run_to_proto(run: Run) -> pb.Run:
    message = _parse(run.body, pb.Run())
    message.id = str(run.id)
    message.user_id = run.user_id
    message.session_id = str(run.session_id)
    message.assistant_id = str(run.assistant_id)
    message.status = int(run.status)
    message.busy_session_strategy = int(run.busy_session_strategy)
    message.last_sequence = run.last_sequence
    message.create_time.CopyFrom(timestamp(run.create_time))
    if run.expire_time is not None:
        message.expire_time.CopyFrom(timestamp(run.expire_time))
    return message


def run_step_to_proto(step: RunStep) -> pb.RunStep:
    message = _parse(step.body, pb.RunStep())
    message.id = str(step.id)
    message.run_id = str(step.run_id)
    message.session_id = str(step.session_id)
    message.assistant_id = str(step.assistant_id)
    message.type = int(step.type)
    message.status = int(step.status)
    message.create_time.CopyFrom(timestamp(step.create_time))
    return message


def run_event_to_proto(event: RunEvent) -> pb.RunEvent:
    message = _parse(event.body, pb.RunEvent())
    message.sequence = event.sequence
    message.run_id = str(event.run_id)
    message.create_time.CopyFrom(timestamp(event.create_time))
    return message


def created_event_body(run: Run) -> dict[str, Any]:
    """The body of a run's first event: its status change to RUN_STATUS_QUEUED."""
    return {"run_status_changed": _to_dict(run_to_proto(run))}


def lease(message: api.RunLease) -> Lease:
    seconds = message.duration.seconds + message.duration.nanos / 1e9
    return Lease(owner=message.owner, seconds=seconds)


def claim_to_proto(claim: Claim) -> api.RunClaim:
    return api.RunClaim(run=run_to_proto(claim.run), reason=int(claim.reason))


def run_change_to_proto(change: RunChange) -> api.WatchRunEventsResponse:
    return api.WatchRunEventsResponse(
        events=[run_event_to_proto(e) for e in change.events], status=int(change.status),
        last_sequence=change.last_sequence,
    )


def function_results(messages, field: str) -> list[FunctionResult]:
    results = []
    for i, message in enumerate(messages):
        expire_time = None
        if message.HasField("expire_time"):
            try:
                expire_time = message.expire_time.ToDatetime(tzinfo=timezone.utc)
            except (ValueError, OverflowError):
                raise errors.InvalidArgument.for_field(f"{field}[{i}].expire_time", "is not a valid time") from None
        results.append(FunctionResult(name=message.name, arguments=message.arguments, output=message.output,
                                      expire_time=expire_time))
    return results


def function_result_to_proto(result: FunctionResult) -> api.FunctionResult:
    message = api.FunctionResult(name=result.name, arguments=result.arguments, output=result.output)
    if result.expire_time is not None:
        message.expire_time.CopyFrom(timestamp(result.expire_time))
    return message
