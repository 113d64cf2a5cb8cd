-- depends: 0003_outbox_exchange
-- Every committed notification is kept with a per-user sequence number, so every
-- socket of a user gets all of them in order, and a client resumes from where it
-- left off (`?since=N`). Trips carry a version and say why they were cancelled,
-- and a rider holds at most one live trip.

-- The last sequence number given to one of the user's notifications, and the last
-- one a socket of theirs had when it closed (where a socket without `since` resumes).
ALTER TABLE users ADD COLUMN last_seq bigint NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN delivered_seq bigint NOT NULL DEFAULT 0;

CREATE TABLE notifications (
    user_id    bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    seq        bigint      NOT NULL,
    created    timestamptz NOT NULL DEFAULT now(),
    frame_type text        NOT NULL,
    -- The whole frame as the user's sockets receive it, `seq` included.
    body       bytea       NOT NULL,
    PRIMARY KEY (user_id, seq)
);
-- Pruning by age walks this index, in batches.
CREATE INDEX notifications_created_idx ON notifications (created);

CREATE INDEX processed_commands_processed_idx ON processed_commands (processed);
CREATE INDEX outbox_created_idx ON outbox (created);

-- A counter per trip, one up for each change: clients and gateways drop a
-- notification older than what they already applied.
ALTER TABLE trips ADD COLUMN version integer NOT NULL DEFAULT 1;
ALTER TABLE trips ADD COLUMN cancel_reason text
    CHECK (cancel_reason IN ('rider', 'no_driver'));

-- One live trip per rider. Requests nobody took now time out; older ones that a
-- rider left open beside a newer trip are ended that way here, so the rule holds.
UPDATE trips SET status = 'CANCELLED', cancel_reason = 'no_driver', version = version + 1
WHERE status = 'REQUESTED' AND EXISTS (
    SELECT 1 FROM trips newer
    WHERE newer.rider_id = trips.rider_id
      AND newer.status IN ('REQUESTED', 'STARTED', 'IN_PROGRESS')
      AND (newer.created, newer.id) > (trips.created, trips.id));
CREATE UNIQUE INDEX trips_one_live_per_rider
    ON trips (rider_id) WHERE status IN ('REQUESTED', 'STARTED', 'IN_PROGRESS');
