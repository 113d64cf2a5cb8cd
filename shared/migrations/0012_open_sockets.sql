-- depends: 0007_sessions
-- Every open socket of every user, on every gateway, so that TAXI_MAX_SOCKETS_PER_USER
-- counts them together; and each gateway's last sign of life, so that the sockets of
-- a gateway that died without a word stop counting.

CREATE TABLE gateways (
    id      text        PRIMARY KEY,
    seen_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE TABLE open_sockets (
    id        uuid        PRIMARY KEY,
    user_id   bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    gateway   text        NOT NULL REFERENCES gateways (id) ON DELETE CASCADE,
    opened_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX open_sockets_user_idx ON open_sockets (user_id, opened_at);
CREATE INDEX open_sockets_gateway_idx ON open_sockets (gateway);
