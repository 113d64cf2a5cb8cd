"""The gateway's HTTP API: sign-up, log-in and sessions, tokens handed out, trips,
photos, throttling, the guards and timeouts every request passes, error bodies, and
the service's descriptions (`api/*.yaml`). Nothing here imports `gateway.live`."""
