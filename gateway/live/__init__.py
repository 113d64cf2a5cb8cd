"""The gateway's live socket path: the `/taxi/` endpoint and its protocol limits,
connected users and their outgoing buffers, offers, drivers' locations, the
notification log, revocations, presence and the gateway's broker side, with the
metrics they count. Nothing here imports `gateway.web`."""
