"""Settings.from_env: defaults, parsing of every TAXI_* variable, and refusals that name it."""

from __future__ import annotations

from dataclasses import fields
from typing import Any
from urllib.parse import urlsplit

import pytest

from shared.settings import DEVELOPMENT_JWT_SECRET, Settings, SettingsError, env_name

REAL_SECRET = "a-real-production-secret-of-48-bytes-0123456789"


def test_without_variables_the_defaults_point_at_local_services() -> None:
    settings = Settings.from_env({})

    assert settings == Settings()
    assert settings.env == "development"
    assert settings.host == "127.0.0.1"
    assert settings.port == 8000
    assert urlsplit(settings.database_url).hostname == "127.0.0.1"
    assert urlsplit(settings.database_url).port == 5432
    assert settings.database_name == "taxi"
    assert urlsplit(settings.amqp_url).hostname == "127.0.0.1"
    assert urlsplit(settings.amqp_url).port == 5672
    assert settings.access_token_minutes == 60
    assert settings.refresh_token_days == 1
    assert settings.broker_prefix == "taxi"
    assert settings.log_level == "INFO"
    assert settings.request_timeout_seconds == 120
    assert settings.notification_retention_seconds == 86400
    assert settings.gateway_silent_seconds == 3
    assert settings.slow_client_seconds == 10
    assert settings.driver_lost_seconds == 300
    assert settings.photo_max_pixels == 24_000_000
    assert settings.login_attempts == 10
    assert settings.login_window_seconds == 300
    assert settings.signup_attempts == 20
    assert settings.http_read_seconds == 10
    assert settings.cors_origins == ""
    assert settings.cors_origin_list == []


def test_empty_and_blank_variables_mean_the_default() -> None:
    assert Settings.from_env({"TAXI_PORT": "", "TAXI_HOST": "   "}) == Settings()


def test_variables_of_other_programs_are_ignored() -> None:
    assert Settings.from_env({"PORT": "1", "DATABASE_URL": "nonsense"}) == Settings()


@pytest.mark.parametrize(
    ("variable", "raw", "expected"),
    [
        ("TAXI_ENV", "test", "test"),
        ("TAXI_DATABASE_URL", "postgresql://app:pw@db.internal:6543/rides", None),
        ("TAXI_DATABASE_URL", "postgres://app@db.internal/rides", None),
        ("TAXI_AMQP_URL", "amqp://app:pw@mq.internal:5673/vhost", None),
        ("TAXI_AMQP_URL", "amqps://app:pw@mq.internal/", None),
        ("TAXI_JWT_SECRET", REAL_SECRET, None),
        ("TAXI_ACCESS_TOKEN_MINUTES", "15", 15),
        ("TAXI_REFRESH_TOKEN_DAYS", "7", 7),
        ("TAXI_BROKER_PREFIX", "taxi-eu_2", None),
        ("TAXI_HOST", "0.0.0.0", None),
        ("TAXI_PORT", "8080", 8080),
        ("TAXI_PORT", "65535", 65535),
        ("TAXI_MAX_FRAME_BYTES", "1024", 1024),
        ("TAXI_MEDIA_DIR", "/var/lib/taxi/media", None),
        ("TAXI_MAX_PHOTO_BYTES", "2048", 2048),
        ("TAXI_DB_POOL_SIZE", "3", 3),
        ("TAXI_OFFER_TTL_SECONDS", "10", 10),
        ("TAXI_GATEWAY_SILENT_SECONDS", "2", 2),
        ("TAXI_REQUEST_TIMEOUT_SECONDS", "45", 45),
        ("TAXI_NOTIFICATION_RETENTION_SECONDS", "3600", 3600),
        ("TAXI_SLOW_CLIENT_SECONDS", "3", 3),
        ("TAXI_DRIVER_LOST_SECONDS", "2", 2),
        ("TAXI_LOG_LEVEL", "WARNING", "WARNING"),
        ("TAXI_LOG_LEVEL", "debug", "DEBUG"),
        ("TAXI_PORT", " 9000 ", 9000),
        ("TAXI_PHOTO_MAX_PIXELS", "1000000", 1_000_000),
        ("TAXI_LOGIN_ATTEMPTS", "3", 3),
        ("TAXI_LOGIN_WINDOW_SECONDS", "60", 60),
        ("TAXI_SIGNUP_ATTEMPTS", "5", 5),
        ("TAXI_HTTP_READ_SECONDS", "30", 30),
        ("TAXI_CORS_ORIGINS", "http://localhost:3001", None),
        ("TAXI_CORS_ORIGINS", "https://app.example.org,http://[::1]:8080", None),
        ("TAXI_CORS_ORIGINS", "*", None),
    ],
)
def test_each_variable_is_parsed(variable: str, raw: str, expected: Any) -> None:
    settings = Settings.from_env({variable: raw})

    field = variable.removeprefix("TAXI_").lower()
    assert getattr(settings, field) == (raw if expected is None else expected)
    others = {f.name for f in fields(Settings)} - {field}
    assert all(getattr(settings, name) == getattr(Settings(), name) for name in others)


def test_dispatch_defaults_to_rings_with_fifteen_second_offers() -> None:
    settings = Settings.from_env({})

    assert settings.dispatch_policy == "rings"
    assert settings.offer_seconds == 15
    assert settings.match_seconds == 2


@pytest.mark.parametrize(
    ("variable", "raw", "field", "expected"),
    [
        ("TAXI_DISPATCH_POLICY", "matched", "dispatch_policy", "matched"),
        ("TAXI_DISPATCH_POLICY", "Rings", "dispatch_policy", "rings"),
        ("TAXI_OFFER_SECONDS", "1", "offer_seconds", 1),
        ("TAXI_MATCH_SECONDS", "5", "match_seconds", 5),
    ],
)
def test_dispatch_variables_are_parsed(variable: str, raw: str, field: str, expected: Any) -> None:
    assert getattr(Settings.from_env({variable: raw}), field) == expected


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("TAXI_DISPATCH_POLICY", "nearest"),
        ("TAXI_OFFER_SECONDS", "0"),
        ("TAXI_OFFER_SECONDS", "1.5"),
        ("TAXI_MATCH_SECONDS", "-2"),
    ],
)
def test_bad_dispatch_variables_are_refused_by_name(variable: str, raw: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        Settings.from_env({variable: raw})


def test_every_setting_has_a_taxi_variable() -> None:
    """Every field is reachable from the environment, under TAXI_<FIELD>."""
    names = {env_name(field.name) for field in fields(Settings)}
    assert set(Settings().to_env()) == names
    assert all(name.startswith("TAXI_") and name.isupper() for name in names)


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("TAXI_PORT", "abc"),
        ("TAXI_PORT", "0"),
        ("TAXI_PORT", "-1"),
        ("TAXI_PORT", "65536"),
        ("TAXI_PORT", "80.5"),
        ("TAXI_DATABASE_URL", "nonsense"),
        ("TAXI_DATABASE_URL", "mysql://app@db/taxi"),
        ("TAXI_DATABASE_URL", "postgresql://"),
        ("TAXI_AMQP_URL", "http://x"),
        ("TAXI_AMQP_URL", "amqp://"),
        ("TAXI_ACCESS_TOKEN_MINUTES", "-1"),
        ("TAXI_ACCESS_TOKEN_MINUTES", "0"),
        ("TAXI_REFRESH_TOKEN_DAYS", "one"),
        ("TAXI_MAX_FRAME_BYTES", "0"),
        ("TAXI_MAX_PHOTO_BYTES", "-5"),
        ("TAXI_DB_POOL_SIZE", "ten"),
        ("TAXI_OFFER_TTL_SECONDS", "0"),
        ("TAXI_GATEWAY_SILENT_SECONDS", "1"),
        ("TAXI_GATEWAY_SILENT_SECONDS", "2.5"),
        ("TAXI_REQUEST_TIMEOUT_SECONDS", "0"),
        ("TAXI_REQUEST_TIMEOUT_SECONDS", "2m"),
        ("TAXI_NOTIFICATION_RETENTION_SECONDS", "-86400"),
        ("TAXI_NOTIFICATION_RETENTION_SECONDS", "1.5"),
        ("TAXI_SLOW_CLIENT_SECONDS", "0"),
        ("TAXI_SLOW_CLIENT_SECONDS", "ten"),
        ("TAXI_DRIVER_LOST_SECONDS", "0"),
        ("TAXI_DRIVER_LOST_SECONDS", "5m"),
        ("TAXI_PHOTO_MAX_PIXELS", "0"),
        ("TAXI_PHOTO_MAX_PIXELS", "24e6"),
        ("TAXI_LOGIN_ATTEMPTS", "0"),
        ("TAXI_LOGIN_WINDOW_SECONDS", "5m"),
        ("TAXI_SIGNUP_ATTEMPTS", "-1"),
        ("TAXI_HTTP_READ_SECONDS", "0"),
        ("TAXI_BROKER_PREFIX", "taxi.eu"),
        ("TAXI_BROKER_PREFIX", "taxi eu"),
        ("TAXI_BROKER_PREFIX", "taxi#"),
        ("TAXI_BROKER_PREFIX", "taxi*"),
        ("TAXI_LOG_LEVEL", "LOUD"),
        ("TAXI_ENV", "staging"),
        ("TAXI_JWT_SECRET", "short"),
        ("TAXI_CORS_ORIGINS", "localhost:3001"),
        ("TAXI_CORS_ORIGINS", "http://localhost:3001/"),
        ("TAXI_CORS_ORIGINS", "http://localhost:3001/app"),
        ("TAXI_CORS_ORIGINS", "ftp://files.example.org"),
        ("TAXI_CORS_ORIGINS", "http://localhost:99999"),
        ("TAXI_CORS_ORIGINS", "http://localhost:3001,,https://app.example.org"),
        ("TAXI_GATEWAY_PROCESSES", "0"),
        ("TAXI_GATEWAY_PROCESSES", "two"),
        # Process n serves its metrics on TAXI_METRICS_PORT - n: there must be a port.
        ("TAXI_GATEWAY_PROCESSES", "9100"),
    ],
)
def test_a_bad_value_is_refused_naming_the_variable(variable: str, raw: str) -> None:
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({variable: raw})

    assert variable in str(refused.value)


def test_a_bad_value_is_refused_even_among_good_ones() -> None:
    environ = {"TAXI_PORT": "8080", "TAXI_LOG_LEVEL": "LOUD", "TAXI_HOST": "0.0.0.0"}
    with pytest.raises(SettingsError, match="TAXI_LOG_LEVEL"):
        Settings.from_env(environ)


def test_the_refusal_says_what_is_expected() -> None:
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({"TAXI_ENV": "staging"})
    assert "production" in str(refused.value)

    with pytest.raises(SettingsError) as refused:
        Settings.from_env({"TAXI_PORT": "abc"})
    assert "whole number" in str(refused.value)


def test_production_refuses_the_development_secret() -> None:
    with pytest.raises(SettingsError, match="TAXI_JWT_SECRET"):
        Settings.from_env({"TAXI_ENV": "production"})

    with pytest.raises(SettingsError, match="TAXI_JWT_SECRET"):
        Settings.from_env({"TAXI_ENV": "production", "TAXI_JWT_SECRET": DEVELOPMENT_JWT_SECRET})


def test_production_runs_with_a_secret_of_its_own() -> None:
    settings = Settings.from_env({"TAXI_ENV": "production", "TAXI_JWT_SECRET": REAL_SECRET})

    assert settings.env == "production"
    assert settings.jwt_secret == REAL_SECRET


def test_the_secret_must_be_at_least_32_bytes() -> None:
    with pytest.raises(SettingsError, match="TAXI_JWT_SECRET"):
        Settings.from_env({"TAXI_JWT_SECRET": "x" * 31})

    assert Settings.from_env({"TAXI_JWT_SECRET": "x" * 32}).jwt_secret == "x" * 32


def test_a_short_secret_is_refused_in_production_too() -> None:
    with pytest.raises(SettingsError, match="TAXI_JWT_SECRET"):
        Settings.from_env({"TAXI_ENV": "production", "TAXI_JWT_SECRET": "too-short"})


def test_the_secret_is_not_echoed_when_refused() -> None:
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({"TAXI_JWT_SECRET": "hunter2-hunter2"})

    assert "hunter2" not in str(refused.value)


def test_to_env_round_trips_through_from_env() -> None:
    settings = Settings(
        env="test",
        database_url="postgresql://app:pw@db.internal:6543/rides",
        amqp_url="amqps://app:pw@mq.internal:5671/prod",
        jwt_secret=REAL_SECRET,
        access_token_minutes=5,
        refresh_token_days=14,
        broker_prefix="taxi-prod_1",
        host="0.0.0.0",
        port=8443,
        metrics_port=9443,
        max_frame_bytes=4096,
        media_dir="/srv/media",
        max_photo_bytes=1000,
        db_pool_size=4,
        offer_ttl_seconds=9,
        rate_limit_per_second=3,
        rate_limit_burst=5,
        log_level="ERROR",
        password_hashing="fast",
        request_timeout_seconds=30,
        notification_retention_seconds=600,
        slow_client_seconds=2,
        location_stale_seconds=12,
        gateway_silent_seconds=5,
        dispatch_radius_meters=1500,
        dispatch_max_offers=3,
        dispatch_widen_seconds=4,
        offer_seconds=6,
        dispatch_policy="matched",
        match_seconds=3,
        driver_lost_seconds=90,
        map_tiles_url="https://tiles.example.org/{z}/{x}/{y}.png",
        revoke_seconds=2,
        max_sockets_per_user=3,
        photo_max_pixels=1_000_000,
        login_attempts=3,
        login_window_seconds=60,
        signup_attempts=4,
        http_read_seconds=5,
        cors_origins="http://localhost:3001,https://app.example.org",
        gateway_processes=2,
    )
    # Every field differs from its default, so a field to_env forgot would show.
    defaults = Settings()
    assert all(getattr(settings, f.name) != getattr(defaults, f.name) for f in fields(Settings))

    environ = settings.to_env()

    assert all(isinstance(value, str) for value in environ.values())
    assert Settings.from_env(environ) == settings


def test_fast_password_hashing_is_refused_in_production() -> None:
    with pytest.raises(SettingsError, match="TAXI_PASSWORD_HASHING"):
        Settings.from_env(
            {
                "TAXI_ENV": "production",
                "TAXI_JWT_SECRET": REAL_SECRET,
                "TAXI_PASSWORD_HASHING": "fast",
            }
        )
    with pytest.raises(SettingsError, match="TAXI_PASSWORD_HASHING"):
        Settings.from_env({"TAXI_PASSWORD_HASHING": "none"})


def test_to_env_of_the_defaults_round_trips() -> None:
    assert Settings.from_env(Settings().to_env()) == Settings()


def test_a_refused_url_does_not_echo_its_password() -> None:
    # A Unix-socket URL (no host) is refused; the refusal must still not print the password.
    with pytest.raises(SettingsError, match="TAXI_DATABASE_URL") as refused:
        Settings.from_env({"TAXI_DATABASE_URL": "postgresql://app:s3cret-pw@/taxi"})

    assert "s3cret-pw" not in str(refused.value)


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ("tile.openstreetmap.org/{z}/{x}/{y}.png", "must be a URL"),
        ("ftp://tiles.example.org/{z}/{x}/{y}.png", "must be a URL"),
        ("https://tiles.example.org/{z}/{x}.png", "must hold {z}, {x} and {y}"),
    ],
)
def test_a_map_tiles_url_the_map_cannot_use_is_refused_naming_it(raw: str, says: str) -> None:
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({"TAXI_MAP_TILES_URL": raw})

    assert "TAXI_MAP_TILES_URL" in str(refused.value)
    assert says in str(refused.value)


def test_the_broker_may_be_several_nodes_separated_by_commas() -> None:
    settings = Settings.from_env(
        {"TAXI_AMQP_URL": "amqp://u:p@node-1:5672/, amqp://u:p@node-2:5672/,amqp://u:p@node-3/"}
    )

    assert settings.amqp_urls == [
        "amqp://u:p@node-1:5672/",
        "amqp://u:p@node-2:5672/",
        "amqp://u:p@node-3/",
    ]


def test_cors_origins_are_a_list_of_origins_separated_by_commas() -> None:
    settings = Settings.from_env(
        {"TAXI_CORS_ORIGINS": "http://localhost:3001, https://app.example.org"}
    )

    assert settings.cors_origin_list == ["http://localhost:3001", "https://app.example.org"]


def test_an_origin_with_a_path_is_refused_saying_how_to_write_one() -> None:
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({"TAXI_CORS_ORIGINS": "http://localhost:3001/"})

    assert "TAXI_CORS_ORIGINS" in str(refused.value)
    assert "scheme://host[:port]" in str(refused.value)


@pytest.mark.parametrize(
    "raw", ["amqp://u:p@node-1/,,amqp://u:p@node-2/", "amqp://u:p@node-1/,http://node-2/"]
)
def test_a_bad_node_in_the_list_is_refused_without_echoing_passwords(raw: str) -> None:
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({"TAXI_AMQP_URL": raw})

    assert "TAXI_AMQP_URL" in str(refused.value)
    assert "u:p" not in str(refused.value)
