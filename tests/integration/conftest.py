"""Fixtures of the integration tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from shared.migrate import drop_database, migrate, with_database
from shared.settings import Settings
from tools.cleanup import unique_name


@pytest.fixture(scope="module")
def module_database_url(settings: Settings) -> Iterator[str]:
    """A migrated database of the test module's own, on the run's server: for tests of
    what sweeps whole tables, which the session's running workers would sweep too."""
    database_url = with_database(settings.database_url, unique_name("module"))
    migrate(database_url)
    yield database_url
    drop_database(database_url)
