-- depends: 0001_users_and_trips
-- The dispatcher's bookkeeping: which commands it has handled, and the outbox.

-- A command's message id is recorded in the transaction that applies it, so a
-- redelivered command is recognised and has no second effect.
CREATE TABLE processed_commands (
    id        uuid        PRIMARY KEY,
    processed timestamptz NOT NULL DEFAULT now()
);

-- Notifications written in the same transaction as the change that caused them.
-- A row is deleted once the broker confirmed it; rows left behind by a crash are
-- published by the relay.
CREATE TABLE outbox (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    created       timestamptz NOT NULL DEFAULT now(),
    routing_key   text        NOT NULL,
    body          bytea       NOT NULL,
    headers       jsonb       NOT NULL DEFAULT '{}',
    -- Offers stop mattering after a while; NULL means the notification never expires.
    expires       timestamptz
);
