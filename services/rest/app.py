"""The ASGI app: one gRPC channel to the gateway for the process's life, OpenAI-shaped errors
for everything (bad JSON, unknown paths, gateway statuses), health and the OpenAPI document."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request

from services.rest.console import Console, default_directory
from services.rest.errors import ApiError
from services.rest.gateway import Gateway
from services.rest.http import error_response, json_response
from services.rest.settings import RestSettings

log = logging.getLogger("parley.rest")


def build_app(settings: RestSettings) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.gateway = Gateway(settings.gateway_target, settings.max_grpc_message_bytes,
                                    settings.request_timeout_seconds)
        log.info("rest edge serving", extra={"gateway": settings.gateway_target})
        try:
            yield
        finally:
            await app.state.gateway.close()

    app = FastAPI(title="Parley — OpenAI-compatible REST edge", version="1.0",
                  description="OpenAI's Assistants v2, Chat Completions, Embeddings, Files and Vector stores "
                              "APIs over Parley. See docs/rest.md for what differs from OpenAI.",
                  lifespan=lifespan, docs_url="/docs", redoc_url=None, openapi_url="/openapi.json")
    app.state.settings = settings
    app.state.console = Console(Path(settings.console_dir) if settings.console_dir else default_directory())

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError):
        return error_response(error)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException):
        status = error.status_code
        if status == 404:
            page = app.state.console.respond(request)
            if page is not None:
                return page
        message = ("Invalid URL" + f" ({request.method} {request.url.path})") if status == 404 else str(error.detail)
        return error_response(ApiError(status, message, code="unknown_url" if status == 404 else None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError):
        first = error.errors()[0]
        param = ".".join(str(p) for p in first["loc"][1:]) or None
        return error_response(ApiError(400, f"Invalid value for '{param}': {first['msg']}.", param=param,
                                       code="invalid_value"))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception):
        # The trace stays in the log; the client gets OpenAI's generic server error.
        log.exception("unexpected error in %s %s", request.method, request.scope.get("route").path
                      if request.scope.get("route") else "?")
        return error_response(ApiError(500, "The server had an error while processing your request.",
                                       type="server_error"))

    @app.get("/healthz", include_in_schema=False)
    async def healthz():
        return json_response({"status": "SERVING"})

    from services.rest import assistants, chat, extensions, files, runs

    # runs first: POST /threads/runs must win over POST /threads/{thread_id}.
    for module in (chat, files, runs, assistants, extensions):
        app.include_router(module.router, prefix="/v1")
    return app
