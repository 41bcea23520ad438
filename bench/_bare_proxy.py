"""The floor for the gateway benchmark: a bare grpc.aio proxy forwarding raw bytes to one
backend, with no interceptors, authentication, limits or checks — what one extra Python gRPC
hop costs by itself. `python -m bench._bare_proxy BACKEND PORT`."""

from __future__ import annotations

import asyncio
import sys

import grpc
from grpc.aio import EOF

_PASS = ("x-parley-identity",)


async def main(target: str, port: int) -> None:
    channel = grpc.aio.insecure_channel(target)

    class Forward(grpc.GenericRpcHandler):
        def service(self, details):
            method = details.method
            if method.endswith("/StreamGenerate"):
                call_backend = channel.unary_stream(method)

                async def stream(request, context):
                    metadata = tuple((k, v) for k, v in context.invocation_metadata() if k in _PASS)
                    call = call_backend(request, metadata=metadata, timeout=context.time_remaining())
                    while (message := await call.read()) is not EOF:
                        yield message

                return grpc.unary_stream_rpc_method_handler(stream)
            call_unary = channel.unary_unary(method)

            async def unary(request, context):
                metadata = tuple((k, v) for k, v in context.invocation_metadata() if k in _PASS)
                return await call_unary(request, metadata=metadata, timeout=context.time_remaining())

            return grpc.unary_unary_rpc_method_handler(unary)

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((Forward(),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
