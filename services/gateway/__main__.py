"""`python -m services.gateway`: the gateway. Subcommands manage keys from the shell:

    python -m services.gateway                          serve (the default)
    python -m services.gateway create-admin-key [--user admin] [--name NAME] [--ttl-days N]
        a new admin API key for a fresh deployment; its secret is printed once, on stdout
    python -m services.gateway dev-key --file .parley/dev-api-key [--user dev]
        the development key of `make run`: reuses the key in FILE while it still works,
        otherwise issues a new one and writes it there
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from datetime import timedelta
from pathlib import Path

from services.runtime.config import ConfigError
from services.runtime.logs import setup_logging


async def _with_keys(action):
    from services.gateway.apikeys import ApiKeys, KeyPolicy
    from services.gateway.app import open_database
    from services.gateway.models import RateLimits
    from services.runtime.audit import AuditLog
    from services.runtime.config import env_str

    class _Settings:  # only what open_database needs: no identity key required for this
        admin_url = env_str("PARLEY_DATABASE_URL")
        database_url = env_str("PARLEY_GATEWAY_DATABASE_URL")
        role_password = env_str("PARLEY_GATEWAY_DATABASE_PASSWORD")
        pool_size = 2

    db = await open_database(_Settings)  # type: ignore[arg-type]
    try:
        # Keys made here are audited like any (api_key.created, in the key's transaction).
        return await action(ApiKeys(db, KeyPolicy(default_limits=RateLimits(), cache_seconds=0),
                                    audit=AuditLog("gateway", db)))
    finally:
        await db.close()


def _admin(user: str):
    from services.gateway.models import Principal

    return Principal(user_id=user, scopes=frozenset({"admin"}), kind="cli")


async def _create_admin_key(user: str, name: str, ttl_days: float | None) -> str:
    from services.gateway.apikeys import utcnow
    from services.gateway.models import NewApiKey, RateLimits

    async def action(keys):
        expire = utcnow() + timedelta(days=ttl_days) if ttl_days else None
        _, secret = await keys.create(_admin(user), NewApiKey(name, ("admin",), expire, RateLimits(), False))
        return secret

    return await _with_keys(action)


async def _dev_key(path: Path, user: str) -> str:
    from services.gateway.models import NewApiKey, RateLimits
    from services.runtime import errors

    async def action(keys):
        if path.exists():
            secret = path.read_text().strip()
            try:
                await keys.authenticate(secret)
                return secret
            except errors.ParleyError:
                pass
        _, secret = await keys.create(_admin(user), NewApiKey("development (make run)", ("admin",), None,
                                                              RateLimits(), False))
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secret + "\n")
        return secret

    return await _with_keys(action)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m services.gateway", description="Parley's gateway")
    commands = parser.add_subparsers(dest="command")
    create = commands.add_parser("create-admin-key", help="issue an admin API key (printed once)")
    create.add_argument("--user", default="admin", help="the user the key acts as (default: admin)")
    create.add_argument("--name", default="bootstrap admin key")
    create.add_argument("--ttl-days", type=float, default=None, help="expire after this many days (default: never)")
    dev = commands.add_parser("dev-key", help="the development key of `make run`")
    dev.add_argument("--file", type=Path, required=True)
    dev.add_argument("--user", default="dev")
    args = parser.parse_args(argv)

    if args.command is None:
        from services.gateway.app import build_app
        from services.runtime.server import run

        run("gateway", build_app, guarded=False)
        return
    setup_logging("gateway", level="WARNING")
    logging.getLogger("parley.gateway.keys").setLevel(logging.WARNING)
    try:
        if args.command == "create-admin-key":
            secret = asyncio.run(_create_admin_key(args.user, args.name, args.ttl_days))
        else:
            secret = asyncio.run(_dev_key(args.file, args.user))
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(secret)


if __name__ == "__main__":
    main()
