"""Protobuf <-> domain for the sandbox service."""

from __future__ import annotations

from google.protobuf import duration_pb2, timestamp_pb2

from parley.sandbox.v1 import sandbox_pb2 as pb
from services.runtime.errors import InvalidArgument
from services.sandbox import sandboxes
from services.sandbox.kernel import Outcome
from services.sandbox.settings import Limits

_STATUS = {sandboxes.READY: pb.SANDBOX_STATUS_READY, sandboxes.BUSY: pb.SANDBOX_STATUS_BUSY,
           sandboxes.EXPIRED: pb.SANDBOX_STATUS_EXPIRED}


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


def duration_seconds(message, field: str) -> float:
    if message.nanos < 0 or message.seconds < 0:
        raise InvalidArgument.for_field(field, "must not be negative")
    return message.seconds + message.nanos / 1e9


def limits_from_proto(message: pb.SandboxLimits) -> Limits:
    return Limits(cpu_seconds=message.cpu_seconds, memory_bytes=message.memory_bytes,
                  wall_time_seconds=message.wall_time_seconds, disk_bytes=message.disk_bytes,
                  max_processes=message.max_processes, output_bytes=message.output_bytes)


def limits_to_proto(limits: Limits) -> pb.SandboxLimits:
    return pb.SandboxLimits(cpu_seconds=limits.cpu_seconds, memory_bytes=limits.memory_bytes,
                            wall_time_seconds=limits.wall_time_seconds, disk_bytes=limits.disk_bytes,
                            max_processes=limits.max_processes, output_bytes=limits.output_bytes)


def sandbox_to_proto(sandbox: sandboxes.Sandbox) -> pb.Sandbox:
    return pb.Sandbox(
        id=sandbox.id, user_id=sandbox.user_id, status=_STATUS[sandbox.status], limits=limits_to_proto(sandbox.limits),
        create_time=_timestamp(sandbox.create_time), last_active_time=_timestamp(sandbox.last_active_time),
        expire_time=_timestamp(sandbox.expire_time), idle_timeout=_duration(sandbox.idle_timeout),
        metadata=sandbox.metadata, session_id=sandbox.session_id,
    )


def file_to_proto(file: sandboxes.SandboxFile) -> pb.SandboxFile:
    return pb.SandboxFile(path=file.path, size_bytes=file.size_bytes, media_type=file.media_type,
                          update_time=_timestamp(file.mtime_ns / 1e9), source_file_id=file.source_file_id)


def result_to_proto(result: sandboxes.ExecutionResult) -> pb.ExecutionResult:
    outcome: Outcome = result.outcome
    message = pb.ExecutionResult(
        exit_code=outcome.exit_code, timed_out=outcome.timed_out, memory_exceeded=outcome.memory_exceeded,
        duration=_duration(outcome.duration_seconds), output_truncated=outcome.output_truncated,
        kernel_restarted=result.kernel_restarted, kernel_died=outcome.kernel_died,
        disk_exceeded=outcome.disk_exceeded, note=result.note,
        output_files=[pb.OutputFile(path=f.path, media_type=f.media_type, size_bytes=f.size_bytes, data=f.data,
                                    inlined=f.inlined) for f in result.output_files],
        displays=[pb.DisplayOutput(media_type=d.media_type, data=d.data, text=d.text) for d in outcome.displays],
    )
    if outcome.error_name:
        message.error.CopyFrom(pb.ExecutionError(name=outcome.error_name, value=outcome.error_value,
                                                 traceback=outcome.traceback))
    return message
