"""Fixtures the ops tests share."""

from __future__ import annotations

import pytest

from gateway.app import create_app
from shared.settings import Settings


@pytest.fixture(scope="module")
def gateway_paths(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """The gateway's routes (building the app opens no connection)."""
    app = create_app(Settings(media_dir=str(tmp_path_factory.mktemp("media"))))
    return {route.path for route in app.routes if hasattr(route, "path")}
