#!/opt/parley/venv/bin/python
"""`grpc-health HOST:PORT [SERVICE]`: exit 0 when the server answers SERVING to a
grpc.health.v1 Check, 1 otherwise. The containers' healthcheck (docker-compose.yml); Kubernetes
uses its built-in gRPC probe instead."""

from __future__ import annotations

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print("usage: grpc-health HOST:PORT [SERVICE]", file=sys.stderr)
        return 2
    target, service = argv[1], argv[2] if len(argv) == 3 else ""
    try:
        with grpc.insecure_channel(target) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=3)
    except grpc.RpcError as exc:
        print(f"{target}: {exc.code().name}", file=sys.stderr)
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{target}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
