"""`python -m deployments check`: is the Prefect server set up the way production runs it?

What the README's *The Prefect server in production* asks for, read from the server itself
where its API says it (`GET /admin/settings`: the settings the server runs with, secrets
masked) and from its database where the API masks it:

- PostgreSQL as the database. The API masks the connection URL, so the database named by
  `--database-url` (or `PREFECT_API_DATABASE_CONNECTION_URL`, as the server is given it)
  is opened and must hold the very rows the API serves (the block types every server
  registers at start), which proves the server behind PREFECT_API_URL stores its state there.
- Redis for messaging, its cache, causal ordering, concurrency leases and the background
  services' queue: needed for more than one server replica (`--replicated`), otherwise
  reported only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

REDIS_SETTINGS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    # environment variable, path in the server's settings, the value production wants
    (
        "PREFECT_MESSAGING_BROKER",
        ("server", "events", "messaging_broker"),
        "prefect_redis.messaging",
    ),
    (
        "PREFECT_MESSAGING_CACHE",
        ("server", "events", "messaging_cache"),
        "prefect_redis.messaging",
    ),
    (
        "PREFECT_SERVER_EVENTS_CAUSAL_ORDERING",
        ("server", "events", "causal_ordering"),
        "prefect_redis.ordering",
    ),
    (
        "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE",
        ("server", "concurrency", "lease_storage"),
        "prefect_redis.lease_storage",
    ),
)
DOCKET = ("PREFECT_SERVER_DOCKET_URL", ("server", "docket", "url"))


@dataclass
class Item:
    what: str
    ok: bool
    text: str
    required: bool = True

    def line(self) -> str:
        mark = "ok" if self.ok else ("MISSING" if self.required else "not set")
        return f"[{mark}] {self.what}: {self.text}"


def _get(settings: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = settings
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def redis_items(settings: dict[str, Any], replicated: bool) -> list[Item]:
    """The Redis-backed settings of the server: required with more than one replica."""
    why = "" if replicated else " (needed for more than one server replica)"
    items = []
    for env, path, wanted in REDIS_SETTINGS:
        value = _get(settings, path)
        ok = value == wanted
        text = f"{value}" if ok else f"is {value!r}; set {env}={wanted}{why}"
        items.append(Item(env, ok, text, required=replicated))
    env, path = DOCKET
    url = str(_get(settings, path) or "")
    ok = url.startswith(("redis://", "rediss://", "unix://"))
    text = "a Redis URL" if ok else f"is {url!r}; set {env}=redis://HOST:6379/1{why}"
    items.append(Item(env, ok, text, required=replicated))
    return items


def libpq_url(url: str) -> str | None:
    """A SQLAlchemy URL of PostgreSQL as libpq takes it; None for any other database."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return None
    dialect = scheme.split("+", 1)[0]
    return f"postgresql://{rest}" if dialect in ("postgresql", "postgres") else None


def database_item(url: str | None, block_type_ids: list[str]) -> Item:
    """Whether `url` is a PostgreSQL database holding the server's rows."""
    what = "database"
    if not url:
        return Item(
            what,
            False,
            "the API masks the connection URL: give it with --database-url or "
            "PREFECT_API_DATABASE_CONNECTION_URL to check that it is PostgreSQL",
        )
    pg = libpq_url(url)
    if pg is None:
        dialect = url.partition("://")[0] or "unknown"
        return Item(
            what,
            False,
            f"{dialect}, not PostgreSQL: set PREFECT_API_DATABASE_CONNECTION_URL="
            "postgresql+asyncpg://USER:PASSWORD@HOST:5432/prefect",
        )
    import psycopg

    try:
        with psycopg.connect(pg, connect_timeout=5) as conn:
            version = conn.execute("SHOW server_version").fetchone()
            found = conn.execute(
                "SELECT count(*) FROM block_type WHERE id::text = ANY(%s)", (block_type_ids,)
            ).fetchone()
    except psycopg.errors.UndefinedTable:
        return Item(what, False, "PostgreSQL, but without Prefect's tables (not migrated?)")
    except (psycopg.Error, OSError) as exc:
        # The driver's message may quote the URL: name the failure only.
        return Item(what, False, f"PostgreSQL, but it cannot be read: {type(exc).__name__}")
    served = len(block_type_ids)
    if not served or not found or found[0] != served:
        return Item(
            what,
            False,
            f"PostgreSQL {version[0] if version else ''}, but not the database this server "
            "stores in (the block types it serves are not there)",
        )
    return Item(
        what, True, f"PostgreSQL {version[0] if version else ''}, holding this server's state"
    )


async def check(database_url: str | None, replicated: bool) -> tuple[list[Item], bool]:
    """Every item, and whether the server is set up as required."""
    from prefect import get_client

    async with get_client() as client:
        response = await client.request("GET", "/admin/settings")
        settings: dict[str, Any] = response.json()
        types = await client.read_block_types()
    items = [database_item(database_url, [str(t.id) for t in types[:20]])]
    items += redis_items(settings, replicated)
    return items, all(i.ok for i in items if i.required)
