"""PostgreSQL access shared by every service: the embedded server, role-scoped pools,
migrations, and per-call transactions that carry the caller's user id for row-level security.

Each service owns one schema and connects as its own role, which is neither superuser nor
BYPASSRLS; only migrations run as the admin. Every user-owned table has forced RLS with
policies on `current_setting('app.user_id')`, which `Database.transaction` sets for the
duration of one transaction from the verified identity and nothing else.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg

from services.runtime import errors
from services.runtime.config import ConfigError, env_float, env_str, state_dir
from services.runtime.identity import USER_ID_PATTERN

log = logging.getLogger("parley.db")

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_MIGRATION_FILE = re.compile(r"^(\d{3,})_[a-z0-9_]+\.sql$")
# The runtime's own tables, applied to a service's schema with `audit=True`: the audit log
# (services/runtime/audit.py) and per-user deletion marks (services/runtime/user_data.py).
RUNTIME_MIGRATIONS = Path(__file__).parent / "migrations"
_RUNTIME_VERSION_PREFIX = "runtime:"


def admin_database_url() -> str:
    """`PARLEY_DATABASE_URL`, or an embedded PostgreSQL (pgserver) under the state directory."""
    url = env_str("PARLEY_DATABASE_URL")
    if url:
        return url
    return start_embedded_postgres(state_dir() / "pg")


# The embedded server's shared_buffers. pgserver's default (PostgreSQL's, 128 MB) is smaller
# than one HNSW index of 100,000 vectors of 384 dimensions (about 200 MB), so a search read
# most of its pages from the OS cache through buffer eviction. Memory is taken as pages are
# used, not at start.
DEFAULT_EMBEDDED_SHARED_BUFFERS = "1GB"


def start_embedded_postgres(data_dir: Path, *, delete_on_exit: bool = False) -> str:
    """Starts (or joins) the embedded server in `data_dir` and returns its admin URL. The
    server stops (and with `delete_on_exit`, its data goes) when the last process that
    started or joined it exits.

    shared_buffers is `PARLEY_EMBEDDED_SHARED_BUFFERS` (default 1GB); it needs a restart, so
    when the running server has another value it is stored with ALTER SYSTEM and the server
    restarted once (in practice on the first start of a data directory)."""
    import pgserver

    data_dir.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(data_dir, cleanup_mode="delete" if delete_on_exit else "stop")
    _ensure_shared_buffers(server, env_str("PARLEY_EMBEDDED_SHARED_BUFFERS", DEFAULT_EMBEDDED_SHARED_BUFFERS))
    return server.get_uri()


def _ensure_shared_buffers(server, wanted: str) -> None:
    from pgserver._commands import pg_ctl

    if not re.fullmatch(r"\d+\s*(kB|MB|GB|TB)?", wanted):
        raise ConfigError(f"PARLEY_EMBEDDED_SHARED_BUFFERS: not a PostgreSQL size (e.g. 512MB, 1GB): {wanted!r}")
    check = f"SELECT pg_size_bytes(current_setting('shared_buffers')) = pg_size_bytes('{wanted}');"
    if server.psql("\\pset tuples_only on\n" + check).strip().endswith("t"):
        return
    server.psql(f"ALTER SYSTEM SET shared_buffers = '{wanted}';")
    log.info("embedded PostgreSQL: shared_buffers set to %s, restarting it", wanted)
    with server._lock:
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)
        server.ensure_postgres_running()  # starts it as pgserver does, and records the new postmaster


def with_credentials(url: str, user: str, password: str | None) -> str:
    """`url` with its user (and password) replaced: the service role's URL from the admin's."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    credentials = quote(user, safe="") + (":" + quote(password, safe="") if password else "")
    return urlunsplit((parts.scheme, f"{credentials}@{host}", parts.path, parts.query, parts.fragment))


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _check_identifier(name: str) -> str:
    if not _IDENTIFIER.match(name):
        raise ValueError(f"not a safe SQL identifier: {name!r}")
    return name


def _migration_files(directory: Path) -> list[Path]:
    found = sorted((int(m.group(1)), path) for path in directory.glob("*.sql") if (m := _MIGRATION_FILE.match(path.name)))
    return [path for _, path in found]


async def migrate(admin_url: str, *, schema: str, role: str, role_password: str | None, migrations_dir: Path,
                  audit: bool = False) -> list[str]:
    """Creates the service's role and schema and applies pending migrations, in order, each in
    its own transaction. Safe to run from several replicas at once (advisory lock). Returns
    the versions applied.

    With `audit`, the runtime's own migrations come first (versions `runtime:NNN_…`, their
    `{schema}` and `{role}` filled in), and the role may only read and append to the audit
    log."""
    schema, role = _check_identifier(schema), _check_identifier(role)
    pending = [(path.stem, path.read_text()) for path in _migration_files(migrations_dir)]
    if audit:
        pending = [(_RUNTIME_VERSION_PREFIX + path.stem,
                    path.read_text().replace("{schema}", schema).replace("{role}", role))
                   for path in _migration_files(RUNTIME_MIGRATIONS)] + pending
    applied_now: list[str] = []
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute("SELECT pg_advisory_lock(hashtext($1))", f"parley-migrate-{schema}")
        exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role)
        if not exists:
            await conn.execute(f"CREATE ROLE {role} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE")
        if role_password:
            await conn.execute(f"ALTER ROLE {role} PASSWORD {quote_literal(role_password)}")
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        await conn.execute(f"GRANT USAGE ON SCHEMA {schema} TO {role}")
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {schema}.schema_migrations "
            "(version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch(f"SELECT version FROM {schema}.schema_migrations")}
        for version, sql in pending:
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(f"SET LOCAL search_path = {schema}, public")
                await conn.execute(sql)
                await conn.execute(f"INSERT INTO {schema}.schema_migrations (version) VALUES ($1)", version)
            applied_now.append(version)
            log.info("applied migration %s.%s", schema, version)
        # The role may read and write rows, never change or own the tables (owners could turn RLS off).
        await conn.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {role}")
        await conn.execute(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {schema} TO {role}")
        await conn.execute(f"REVOKE ALL ON {schema}.schema_migrations FROM {role}")
        if audit:  # append-only: the blanket grant above must not reach the audit log
            await conn.execute(f"REVOKE UPDATE, DELETE, TRUNCATE ON {schema}.audit_events FROM {role}")
    finally:
        try:
            await conn.execute("SELECT pg_advisory_unlock_all()")
        finally:
            await conn.close()
    return applied_now


# What a database that is restarting, shutting down or unreachable raises: UNAVAILABLE
# (retryable), never INTERNAL. PostgresConnectionError is SQLSTATE class 08 (connection
# exceptions); query cancellation (class 57 too) is a timeout, mapped on its own.
UNAVAILABLE_ERRORS = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.InterfaceError,
    # A connection whose server went away mid-reply is left in a protocol state where its
    # next statement raises this ("cannot switch to state …; another operation is in progress").
    asyncpg.exceptions._base.InternalClientError,
)


def database_unavailable() -> errors.Unavailable:
    return errors.Unavailable("the database is unavailable; try again shortly", reason="DATABASE_UNAVAILABLE")


async def _reset_after_transaction(conn: asyncpg.Connection) -> None:
    """Pool reset: connections only ever carry transaction-local state (`app.user_id` is set
    with is_local), so a rollback of anything left open is enough. asyncpg's default reset
    (unlock advisory locks, close cursors, unlisten, RESET ALL) would cost a round trip on
    every call."""
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


# No statement of a service may run longer than this (PostgreSQL's statement_timeout on every
# pooled connection): a runaway query answers DEADLINE_EXCEEDED instead of holding a
# connection and its locks for good. Migrations, run as the admin, are not limited.
DEFAULT_STATEMENT_TIMEOUT_SECONDS = 30.0


def statement_timeout_from_env(service: str) -> float:
    """`PARLEY_<SERVICE>_STATEMENT_TIMEOUT_SECONDS`, else `PARLEY_DATABASE_STATEMENT_TIMEOUT_SECONDS`,
    else 30 seconds; 0 means no limit."""
    default = env_float("PARLEY_DATABASE_STATEMENT_TIMEOUT_SECONDS", DEFAULT_STATEMENT_TIMEOUT_SECONDS, minimum=0)
    return env_float(f"PARLEY_{service.upper()}_STATEMENT_TIMEOUT_SECONDS", default, minimum=0)


async def jsonb_as_python(conn: asyncpg.Connection) -> None:
    """Connection hook: jsonb columns and parameters travel as Python objects."""
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


ConnectionHook = Callable[[asyncpg.Connection], Awaitable[None]]


async def open_service_database(
    *,
    schema: str,
    role: str,
    migrations_dir: Path,
    admin_url: str | None,
    database_url: str | None,
    role_password: str | None,
    pool_size: int,
    statement_timeout: float = DEFAULT_STATEMENT_TIMEOUT_SECONDS,
    jsonb: bool = True,
    init: ConnectionHook | None = None,
    check_server: Callable[[str, bool], Awaitable[None]] | None = None,
    audit: bool = False,
) -> Database:
    """The one database start-up of every service: with an admin URL (or, when neither URL is
    given, the embedded server) migrate the schema and create the service role, then open the
    pool as that role (`database_url` overrides the role URL derived from the admin's).

    `jsonb` installs `jsonb_as_python` before `init` on every connection. `check_server(url,
    is_admin)` runs first against the admin URL, or against the role URL when there is none
    (the files service checks for pgvector there). `audit` adds the runtime's audit log and
    deletion marks to the schema (see `migrate`)."""
    admin_url = admin_url or (None if database_url else admin_database_url())
    if admin_url:
        if check_server is not None:
            await check_server(admin_url, True)
        await migrate(admin_url, schema=schema, role=role, role_password=role_password, migrations_dir=migrations_dir,
                      audit=audit)
    url = database_url or with_credentials(admin_url, role, role_password)
    if not admin_url and check_server is not None:
        await check_server(url, False)
    hooks = [h for h in (jsonb_as_python if jsonb else None, init) if h is not None]

    async def on_connect(conn: asyncpg.Connection) -> None:
        for hook in hooks:
            await hook(conn)

    return await Database.connect(url, schema=schema, init=on_connect if hooks else None, max_size=pool_size,
                                  statement_timeout=statement_timeout)


class Database:
    """A pool of connections as the service role, handing out user-scoped transactions."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        schema: str,
        init: ConnectionHook | None = None,
        min_size: int = 2,
        max_size: int = 20,
        statement_timeout: float = DEFAULT_STATEMENT_TIMEOUT_SECONDS,
    ) -> Database:
        settings = {"application_name": f"parley-{schema}", "search_path": _check_identifier(schema)}
        if statement_timeout > 0:
            settings["statement_timeout"] = str(max(1, round(statement_timeout * 1000)))
        pool = await asyncpg.create_pool(
            url,
            min_size=min(min_size, max_size),
            max_size=max_size,
            init=init,
            reset=_reset_after_transaction,
            server_settings=settings,
        )
        return cls(pool)

    async def close(self) -> None:
        await self.pool.close()

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection that is discarded, not handed out again, when a statement on it
        failed because the database went away: its protocol state can no longer be trusted,
        and the pool's reset (a rollback only when a transaction is open) would not notice."""
        async with self.pool.acquire() as conn:
            try:
                yield conn
            except UNAVAILABLE_ERRORS:
                conn.terminate()
                raise

    @asynccontextmanager
    async def transaction(self, user_id: str, *, readonly: bool = False) -> AsyncIterator[asyncpg.Connection]:
        """One transaction in which RLS sees `user_id` as the current user.

        BEGIN and the setting travel in one round trip: the user id is checked against the
        identity alphabet, so quoting it as a literal is safe.

        BEGIN and COMMIT are inside the rolled-back part too: a call cancelled by its client
        (a deadline, a stream closed early) is cancelled wherever it waits, and a BEGIN the
        server ran before the cancellation reached it would otherwise leave the transaction
        open for the pool's reset to find (which asyncpg logs as an error). ROLLBACK where
        no transaction is open only warns.
        """
        if not USER_ID_PATTERN.match(user_id):
            raise errors.Unauthenticated("user id is not acceptable", reason="IDENTITY_INVALID")
        begin = "BEGIN READ ONLY" if readonly else "BEGIN"
        try:
            async with self.acquire() as conn:
                try:
                    await conn.execute(f"{begin}; SELECT set_config('app.user_id', {quote_literal(user_id)}, true)")
                    yield conn
                    await conn.execute("COMMIT")
                except BaseException:
                    try:
                        await conn.execute("ROLLBACK")
                    except Exception:  # noqa: BLE001 - a broken connection is reset by the pool
                        pass
                    raise
        except UNAVAILABLE_ERRORS as exc:
            log.warning("database unavailable: %s", type(exc).__name__)
            raise database_unavailable() from None
        except asyncpg.exceptions.QueryCanceledError:
            raise errors.DeadlineExceeded("the database query took too long", reason="DATABASE_TIMEOUT") from None
