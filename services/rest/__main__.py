"""`python -m services.rest`: the OpenAI-compatible HTTP edge on PARLEY_REST_PORT (8080)."""

from __future__ import annotations

import sys

from services.runtime.config import ConfigError, env_float
from services.runtime.logs import setup_logging


def main() -> int:
    setup_logging("rest")
    try:
        from services.rest.settings import RestSettings

        settings = RestSettings.from_env()
        grace = env_float("PARLEY_SHUTDOWN_GRACE_SECONDS", 10.0, minimum=0)
    except ConfigError as error:
        print(f"rest: {error}", file=sys.stderr)
        return 2
    import uvicorn

    from services.rest.app import build_app

    # Access logs stay off: paths and queries are the caller's data; the gateway logs each call.
    uvicorn.run(build_app(settings), host=settings.host, port=settings.port, http="httptools", loop="asyncio",
                access_log=False, log_config=None, timeout_graceful_shutdown=grace, lifespan="on")
    return 0


if __name__ == "__main__":
    sys.exit(main())
