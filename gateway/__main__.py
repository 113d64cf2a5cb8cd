"""`python -m gateway`: serve the gateway with uvicorn, configured from the environment."""

from __future__ import annotations

import sys

import uvicorn

from gateway.app import create_app
from shared.logs import configure_logging
from shared.settings import Settings, SettingsError


def main() -> None:
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        sys.exit(f"configuration error: {exc}")
    configure_logging(settings.log_level, "gateway")
    print(
        f"gateway: HTTP on http://{settings.host}:{settings.port}/api/, "
        f"WebSocket on ws://{settings.host}:{settings.port}/taxi/?token=...",
        flush=True,
    )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        ws="websockets-sansio",
        ws_max_size=settings.max_frame_bytes,
        # Trip frames are small; compressing each one costs more CPU than it saves.
        ws_per_message_deflate=False,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
    )


if __name__ == "__main__":
    main()
