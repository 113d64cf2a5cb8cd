"""The one typed settings object, read from the environment once at start-up.

Every entry point calls `Settings.from_env()` and passes the result down; nothing
else reads `os.environ`. A bad value stops start-up with a message naming the
variable, so an operator never has to guess which of twenty settings is wrong.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import urlsplit

# Long enough for HS256 (RFC 7518 asks for at least 256 bits), and refused in production.
DEVELOPMENT_JWT_SECRET = "development-only-secret-do-not-use-in-production"

ENVIRONMENTS = ("development", "test", "production")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
PASSWORD_HASHING = ("standard", "fast")
# Who is offered a request with a pick-up point (PROTOCOL D2): rings of the nearest, first
# to accept wins; or, every TAXI_MATCH_SECONDS, each request to the one driver an optimal
# pairing of waiting requests and free drivers gives it.
DISPATCH_POLICIES = ("rings", "matched")


class SettingsError(ValueError):
    """A setting has a value the system cannot run with."""


@dataclass(frozen=True, slots=True)
class Settings:
    env: str = "development"
    database_url: str = "postgresql://postgres@127.0.0.1:5432/taxi"
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    jwt_secret: str = DEVELOPMENT_JWT_SECRET
    access_token_minutes: int = 60
    refresh_token_days: int = 1
    broker_prefix: str = "taxi"
    host: str = "127.0.0.1"
    port: int = 8000
    # The gateway serves /metrics on this port, never on its public one; workers serve
    # theirs, with health checks, on the ports after it, one each (`make run` gives
    # worker n this + n; a worker alone takes this + 1).
    metrics_port: int = 9100
    max_frame_bytes: int = 64 * 1024
    media_dir: str = "media"
    max_photo_bytes: int = 5 * 1024 * 1024
    db_pool_size: int = 10
    offer_ttl_seconds: int = 30
    # Frames a client may send per second on one socket, and the burst allowed above that.
    rate_limit_per_second: int = 20
    rate_limit_burst: int = 40
    log_level: str = "INFO"
    # "standard" Argon2id, or "fast" for test and benchmark runs (refused in production).
    password_hashing: str = "standard"
    # A trip nobody accepts within this long is cancelled with cancel_reason "no_driver".
    request_timeout_seconds: int = 120
    # How long the notification log keeps a notification for clients resuming with `since`.
    notification_retention_seconds: int = 24 * 60 * 60
    # A socket whose outgoing buffer stays full this long is closed: one slow client
    # must not hold notifications, or memory, for everyone else on its gateway.
    slow_client_seconds: int = 10
    # A driver's reported location counts as unknown once it is this old.
    location_stale_seconds: int = 30
    # Every gateway tells the workers it is there at least once a second; the drivers
    # of one not heard from for this long (killed, or cut off from the broker) are
    # offered nothing by distance until it speaks again. At least 2.
    gateway_silent_seconds: int = 3
    # A trip with a pick-up point is offered first to at most `dispatch_max_offers` of
    # the nearest free drivers within `dispatch_radius_meters`; whenever nobody has
    # accepted for `dispatch_widen_seconds`, the radius doubles and more are offered.
    dispatch_radius_meters: int = 3000
    dispatch_max_offers: int = 8
    dispatch_widen_seconds: int = 15
    # An offer by name left unanswered this long is withdrawn from its driver (reason
    # "expired"), and an accept that comes after it is refused.
    offer_seconds: int = 15
    # "rings" or "matched" (DISPATCH_POLICIES); the matched policy pairs the waiting
    # requests with free drivers every `match_seconds`.
    dispatch_policy: str = "rings"
    match_seconds: int = 2
    # A trip under way whose driver has had no open socket and sent nothing for this
    # long, or whose driver was deactivated, is cancelled (cancel_reason "driver_lost").
    driver_lost_seconds: int = 300
    # A user whose sessions end (deactivated, password changed) has their open sockets
    # closed within this many seconds.
    revoke_seconds: int = 5
    # Sockets one user may hold on one gateway; a new one closes their oldest.
    max_sockets_per_user: int = 5
    # Where the browser client's map takes its tiles ({z}/{x}/{y} filled in by the map);
    # without them the map still shows its markers on a plain background.
    map_tiles_url: str = "https://tile.openstreetmap.org/{z}/{x}/{y}.png"
    # A photo of more pixels than this is refused, by its declared size, before it is decoded.
    photo_max_pixels: int = 24_000_000
    # Log-in answers 429 once one user name, or one client address, has had this many
    # failed log-ins within the window; sign-up once one client address has made this
    # many sign-ups (successful or not) within the same window.
    login_attempts: int = 10
    login_window_seconds: int = 300
    signup_attempts: int = 20
    # A request's headers must arrive within this long of the connection opening (or
    # of the previous answer on it); its body within this long, plus a second for every
    # 8 KiB of it. A slower request is cut off. WebSockets, once open, are not affected.
    http_read_seconds: int = 10
    # Origins (comma-separated, like http://localhost:3001) whose pages may call the
    # HTTP API and load photos from another origin; empty: the gateway's own only.
    cors_origins: str = ""
    # Gateway processes on this host, each a gateway of its own (its own queue, its own
    # sockets) sharing the HTTP port (SO_REUSEPORT): one process uses one core. Process
    # n (from 0) serves its metrics on TAXI_METRICS_PORT - n, below the workers' ports.
    gateway_processes: int = 1

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in fields(cls):
            name = env_name(field.name)
            raw = environ.get(name)
            if raw is None or raw.strip() == "":
                continue
            parse = _PARSERS.get(field.name, _text)
            try:
                values[field.name] = parse(raw.strip())
            except ValueError as exc:
                # URLs may hold passwords: name the variable, never echo a secret.
                shown = "" if field.name in _SECRET_BEARING else f"={raw!r}"
                raise SettingsError(f"{name}{shown}: {exc}") from None
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Check the settings as a whole; raise SettingsError naming the variable."""
        if self.env not in ENVIRONMENTS:
            raise SettingsError(f"{env_name('env')}: must be one of {', '.join(ENVIRONMENTS)}")
        if self.env == "production" and self.jwt_secret == DEVELOPMENT_JWT_SECRET:
            raise SettingsError(
                f"{env_name('jwt_secret')}: set a secret of your own; the development "
                "secret is refused when TAXI_ENV=production"
            )
        if len(self.jwt_secret.encode()) < 32:
            raise SettingsError(f"{env_name('jwt_secret')}: must be at least 32 bytes long")
        if not self.broker_prefix.replace("-", "").replace("_", "").isalnum():
            raise SettingsError(
                f"{env_name('broker_prefix')}: use letters, digits, '-' and '_' only"
            )
        for port_field in ("port", "metrics_port"):
            if not 0 < getattr(self, port_field) < 65536:
                raise SettingsError(f"{env_name(port_field)}: must be between 1 and 65535")
        if self.gateway_processes >= self.metrics_port:
            raise SettingsError(
                f"{env_name('gateway_processes')}: gateway process n serves its metrics on "
                f"{env_name('metrics_port')} - n; lower it or raise that port"
            )
        if self.password_hashing not in PASSWORD_HASHING:
            raise SettingsError(
                f"{env_name('password_hashing')}: must be one of {', '.join(PASSWORD_HASHING)}"
            )
        if self.env == "production" and self.password_hashing != "standard":
            raise SettingsError(
                f"{env_name('password_hashing')}: must be 'standard' when TAXI_ENV=production"
            )
        if self.dispatch_policy not in DISPATCH_POLICIES:
            raise SettingsError(
                f"{env_name('dispatch_policy')}: must be one of {', '.join(DISPATCH_POLICIES)}"
            )
        if self.log_level not in LOG_LEVELS:
            raise SettingsError(f"{env_name('log_level')}: must be one of {', '.join(LOG_LEVELS)}")

    def to_env(self) -> dict[str, str]:
        """The environment that reproduces these settings in another process."""
        return {env_name(field.name): str(getattr(self, field.name)) for field in fields(self)}

    @property
    def amqp_urls(self) -> list[str]:
        """The broker's nodes: TAXI_AMQP_URL lists one URL, or several separated by
        commas (the nodes of one cluster, tried in turn)."""
        return [url.strip() for url in self.amqp_url.split(",") if url.strip()]

    @property
    def cors_origin_list(self) -> list[str]:
        """The origins TAXI_CORS_ORIGINS allows, or none (same origin only)."""
        return [origin.strip() for origin in self.cors_origins.split(",") if origin.strip()]

    @property
    def database_name(self) -> str:
        return urlsplit(self.database_url).path.lstrip("/")


def env_name(field_name: str) -> str:
    return f"TAXI_{field_name.upper()}"


def _text(raw: str) -> str:
    return raw


def _positive_int(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ValueError("must be a whole number") from None
    if value <= 0:
        raise ValueError("must be greater than zero")
    return value


def _at_least(low: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        value = _positive_int(raw)
        if value < low:
            raise ValueError(f"must be at least {low}")
        return value

    return parse


def _url(*schemes: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        parts = urlsplit(raw)
        if parts.scheme not in schemes or not parts.hostname:
            raise ValueError(f"must be a URL like {schemes[0]}://user@host:port/name")
        return raw

    return parse


def postgres_hosts(url: str) -> list[tuple[str, int]]:
    """(host, port) of every server a Postgres URL names: one, or several separated by
    commas, libpq style (`postgresql://user@h1:5432,h2:5433/taxi`: a primary and its
    standbys, `target_session_attrs=read-write` picking the primary); 5432 where no port
    is given. ValueError for an empty host or a port that is not one."""
    netloc = urlsplit(url).netloc.rpartition("@")[2]
    hosts = []
    for item in netloc.split(","):
        if item.startswith("["):  # [::1]:5432
            host, _, rest = item[1:].partition("]")
            port = rest.removeprefix(":")
        else:
            host, _, port = item.partition(":")
        if not host:
            raise ValueError("name every server as host or host:port, separated by commas")
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            raise ValueError(f"{item!r}: its port must be a number from 1 to 65535")
        hosts.append((host, int(port) if port else 5432))
    return hosts


def _postgres_url(raw: str) -> str:
    if urlsplit(raw).scheme not in ("postgresql", "postgres"):
        raise ValueError(
            "must be a URL like postgresql://user@host:port/name, or with several servers "
            "postgresql://user@h1:5432,h2:5433/name?target_session_attrs=read-write"
        )
    postgres_hosts(raw)
    return raw


def _tiles_url(raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be a URL like https://tile.example.org/{z}/{x}/{y}.png")
    if not all(part in raw for part in ("{z}", "{x}", "{y}")):
        raise ValueError("must hold {z}, {x} and {y}, which the map fills in for each tile")
    return raw


def _urls(*schemes: str) -> Callable[[str], str]:
    """One URL, or several separated by commas, each of one of the schemes."""
    one = _url(*schemes)

    def parse(raw: str) -> str:
        urls = [url.strip() for url in raw.split(",")]
        if not all(urls):
            raise ValueError("separate the node URLs with single commas, none empty")
        for url in urls:
            one(url)
        return raw

    return parse


def _origins(raw: str) -> str:
    """Origins separated by commas, each scheme://host[:port] as a browser sends it in
    its Origin header (no path, no trailing slash), or * for any origin."""
    origins = [origin.strip() for origin in raw.split(",")]
    if not all(origins):
        raise ValueError("separate the origins with single commas, none empty")
    for origin in origins:
        if origin == "*":
            continue
        parts = urlsplit(origin)
        try:
            parts.port  # noqa: B018 (reading it checks it)
        except ValueError:
            raise ValueError(f"{origin!r}: its port must be a number from 1 to 65535") from None
        if (
            parts.scheme not in ("http", "https")
            or not parts.hostname
            or parts.path
            or parts.query
            or parts.fragment
            or parts.username is not None
        ):
            raise ValueError(
                f"{origin!r} is not an origin: write scheme://host[:port], like "
                "http://localhost:3001, without a path or a trailing slash"
            )
    return raw


def _upper(raw: str) -> str:
    return raw.upper()


_SECRET_BEARING = frozenset({"database_url", "amqp_url", "jwt_secret"})

_PARSERS: dict[str, Callable[[str], Any]] = {
    "database_url": _postgres_url,
    "amqp_url": _urls("amqp", "amqps"),
    "access_token_minutes": _positive_int,
    "refresh_token_days": _positive_int,
    "port": _positive_int,
    "metrics_port": _positive_int,
    "max_frame_bytes": _positive_int,
    "max_photo_bytes": _positive_int,
    "db_pool_size": _positive_int,
    "offer_ttl_seconds": _positive_int,
    "rate_limit_per_second": _positive_int,
    "rate_limit_burst": _positive_int,
    "log_level": _upper,
    "request_timeout_seconds": _positive_int,
    "notification_retention_seconds": _positive_int,
    "slow_client_seconds": _positive_int,
    "location_stale_seconds": _positive_int,
    # Gateways speak every second: one late heartbeat must not silence one.
    "gateway_silent_seconds": _at_least(2),
    "dispatch_radius_meters": _positive_int,
    "dispatch_max_offers": _positive_int,
    "dispatch_widen_seconds": _positive_int,
    "offer_seconds": _positive_int,
    "dispatch_policy": str.lower,
    "match_seconds": _positive_int,
    "driver_lost_seconds": _positive_int,
    "map_tiles_url": _tiles_url,
    "revoke_seconds": _positive_int,
    "max_sockets_per_user": _positive_int,
    "photo_max_pixels": _positive_int,
    "login_attempts": _positive_int,
    "login_window_seconds": _positive_int,
    "signup_attempts": _positive_int,
    "http_read_seconds": _positive_int,
    "cors_origins": _origins,
    "gateway_processes": _positive_int,
}


def main() -> None:
    """`python -m shared.settings TAXI_NAME`: print one setting as the processes see it
    (the Makefile reads TAXI_METRICS_PORT so). Secrets are never printed."""
    names = {
        env_name(field.name): field.name
        for field in fields(Settings)
        if field.name not in _SECRET_BEARING
    }
    if len(sys.argv) != 2 or sys.argv[1] not in names:
        sys.exit(f"usage: python -m shared.settings NAME, NAME one of {', '.join(names)}")
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        sys.exit(f"configuration error: {exc}")
    print(getattr(settings, names[sys.argv[1]]))


if __name__ == "__main__":
    main()
