"""TAXI_DATABASE_URL naming several servers, libpq style: how each tool reads it."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from shared.migrate import _yoyo_url, maintenance_url
from shared.settings import Settings, SettingsError, postgres_hosts

FAILOVER_URL = (
    "postgresql://taxi:s%40cret@db1:5432,db2:5433,[::1]/taxi?target_session_attrs=read-write"
)


def test_every_server_is_read_with_its_port_or_5432() -> None:
    assert postgres_hosts(FAILOVER_URL) == [("db1", 5432), ("db2", 5433), ("::1", 5432)]
    assert postgres_hosts("postgresql://u@h/taxi") == [("h", 5432)]


@pytest.mark.parametrize(
    "url", ["postgresql://u@h1:5432,,h2/taxi", "postgresql://u@h1:99999/taxi", "mysql://h/taxi"]
)
def test_a_url_naming_no_server_or_no_port_is_refused(url: str) -> None:
    with pytest.raises(SettingsError):
        Settings.from_env({"TAXI_DATABASE_URL": url})


def test_settings_take_several_servers_and_name_the_database() -> None:
    settings = Settings.from_env({"TAXI_DATABASE_URL": FAILOVER_URL})
    assert settings.database_name == "taxi"


def test_the_maintenance_url_keeps_every_server_and_the_primary_choice() -> None:
    assert maintenance_url(FAILOVER_URL) == FAILOVER_URL.replace("/taxi?", "/postgres?")


def test_yoyo_gets_the_servers_as_libpq_parameters() -> None:
    url = _yoyo_url(FAILOVER_URL)
    parts = urlsplit(url)
    assert parts.scheme == "postgresql+psycopg" and parts.hostname is None
    assert parts.username == "taxi" and parts.password == "s%40cret"
    assert parts.path == "/taxi"
    query = parse_qs(parts.query)
    assert query == {
        "target_session_attrs": ["read-write"],
        "host": ["db1,db2,::1"],
        "port": ["5432,5433,5432"],
    }
    single = "postgresql://taxi@db1:5432/taxi"
    assert _yoyo_url(single) == "postgresql+psycopg://taxi@db1:5432/taxi"
