-- depends: 0010_user_name_skeleton
-- Failed log-ins (by user name and by client address) and sign-ups (by client
-- address), counted over a sliding window to answer 429 past the limit. In Postgres,
-- not in each gateway's memory: behind a load balancer with several gateways, counts
-- per process would multiply an attacker's budget by the number of gateways.
-- `key` is a SHA-256 digest (no user name or address is kept); rows older than the
-- window are deleted as new ones come in.
CREATE TABLE http_attempts (
    id    bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key   text        NOT NULL,
    at    timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX http_attempts_key_at_idx ON http_attempts (key, at);
CREATE INDEX http_attempts_at_idx ON http_attempts (at);
