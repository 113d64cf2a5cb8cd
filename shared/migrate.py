"""Apply the database migrations (plain SQL files, run by yoyo).

`python -m shared.migrate` (or `make migrate`) creates the database named in
TAXI_DATABASE_URL if it does not exist yet, then applies what is missing.
"""

from __future__ import annotations

import sys
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import sql
from yoyo import get_backend, read_migrations

from shared.settings import Settings, SettingsError, postgres_hosts
from shared.user_names import skeleton

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def migrate(database_url: str) -> int:
    """Bring the database up to date; return how many migrations were applied."""
    create_database_if_missing(database_url)
    backend = get_backend(_yoyo_url(database_url))
    migrations = read_migrations(str(MIGRATIONS_DIR))
    with backend.lock():
        pending = backend.to_apply(migrations)
        backend.apply_migrations(pending)
    fill_username_skeletons(database_url)
    return len(pending)


def fill_username_skeletons(database_url: str) -> int:
    """Give every user who has none their user name's confusable skeleton (migration
    0010: Postgres cannot compute it). Of two existing users whose names look alike,
    the earlier gets it and the later keeps none (both still log in; a new look-alike
    of either is refused). Return how many users got one."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT id, username FROM users WHERE username_skeleton IS NULL ORDER BY id"
        ).fetchall()
        filled = 0
        for user_id, username in rows:
            key = skeleton(username)
            try:
                cursor = conn.execute(
                    """
                    UPDATE users SET username_skeleton = %s
                    WHERE id = %s
                      AND NOT EXISTS (SELECT 1 FROM users WHERE username_skeleton = %s)
                    """,
                    (key, user_id, key),
                )
            except psycopg.errors.UniqueViolation:
                continue  # a look-alike signed up meanwhile, through a running gateway
            filled += cursor.rowcount
    return filled


def create_database_if_missing(database_url: str) -> None:
    name = urlsplit(database_url).path.lstrip("/")
    with psycopg.connect(maintenance_url(database_url), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def drop_database(database_url: str) -> bool:
    """Drop the database, closing its connections; return whether it existed."""
    name = urlsplit(database_url).path.lstrip("/")
    with psycopg.connect(maintenance_url(database_url), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
    return exists is not None


def maintenance_url(database_url: str) -> str:
    """The same server, but the `postgres` database, which always exists."""
    return with_database(database_url, "postgres")


def with_database(database_url: str, name: str) -> str:
    """The same server, another database."""
    return urlunsplit(urlsplit(database_url)._replace(path=f"/{name}"))


def _yoyo_url(database_url: str) -> str:
    """yoyo's URL for psycopg. yoyo reads one host and port from the URL itself, so
    several servers (a primary and its standbys) go as libpq's `host` and `port`
    parameters instead, which yoyo hands psycopg as they are: libpq then picks the
    primary by `target_session_attrs`, as every other process does."""
    parts = urlsplit(database_url)
    hosts = postgres_hosts(database_url)
    if len(hosts) > 1:
        user = parts.netloc.rpartition("@")[0]
        query = [
            *parse_qsl(parts.query),
            ("host", ",".join(host for host, _ in hosts)),
            ("port", ",".join(str(port) for _, port in hosts)),
        ]
        # urlunsplit would drop the // of an empty host part.
        netloc = f"{user}@" if user else ""
        return f"postgresql+psycopg://{netloc}{parts.path}?{urlencode(query)}"
    return urlunsplit(parts._replace(scheme="postgresql+psycopg"))


def main() -> None:
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        sys.exit(f"configuration error: {exc}")
    try:
        applied = migrate(settings.database_url)
    except psycopg.OperationalError as exc:
        sys.exit(f"cannot reach Postgres at TAXI_DATABASE_URL: {exc}".strip())
    print(f"database {settings.database_name}: {applied} migration(s) applied, schema up to date")


if __name__ == "__main__":
    main()
