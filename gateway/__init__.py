"""The gateway: `app.py` wires two sides, each a subpackage that never imports the
other.

- `web/`: the HTTP API (sign-up, log-in, sessions, trips, photos, the guards and
  timeouts every request passes, error bodies, the service's descriptions).
- `live/`: the live socket path (the `/taxi/` endpoint, connected users, outgoing
  buffers, offers, locations, the notification log, revocations, the broker side).

What both use stands here: tokens (`tokens.py`), the users' table (`users.py`) and
JSON answers (`responses.py`).
"""
