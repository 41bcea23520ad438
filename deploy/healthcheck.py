#!/opt/parley/venv/bin/python
"""`grpc-health HOST:PORT [SERVICE]`: exit 0 when the server answers SERVING to a
grpc.health.v1 Check, 1 otherwise; `grpc-health http://HOST:PORT/PATH`: exit 0 on an HTTP 200
(the REST edge's /healthz). The containers' healthcheck (docker-compose.yml); Kubernetes uses
its built-in gRPC and HTTP probes instead."""

from __future__ import annotations

import sys
import urllib.error
import urllib.request

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print("usage: grpc-health HOST:PORT [SERVICE]", file=sys.stderr)
        return 2
    target, service = argv[1], argv[2] if len(argv) == 3 else ""
    if target.startswith(("http://", "https://")):
        return _http(target)
    try:
        with grpc.insecure_channel(target) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=3)
    except grpc.RpcError as exc:
        print(f"{target}: {exc.code().name}", file=sys.stderr)
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{target}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def _http(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=3) as reply:
            status = reply.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except OSError as exc:
        print(f"{url}: {exc}", file=sys.stderr)
        return 1
    print(f"{url}: HTTP {status}")
    return 0 if status == 200 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
