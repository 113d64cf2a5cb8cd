-- depends: 0007_sessions
-- Trips always end, and what one user can make the database keep is bounded.

-- When each driver was last known to be present: a gateway holding an open socket of
-- theirs records it every few seconds. A trip under way whose driver has been absent
-- (and whose last change is) older than TAXI_DRIVER_LOST_SECONDS, or whose driver was
-- deactivated, ends as CANCELLED with cancel_reason 'driver_lost'.
ALTER TABLE users ADD COLUMN seen_at timestamptz;

ALTER TABLE trips DROP CONSTRAINT trips_cancel_reason_check;
ALTER TABLE trips ADD CONSTRAINT trips_cancel_reason_check
    CHECK (cancel_reason IN ('rider', 'no_driver', 'driver_lost'));

-- A processed command remembers who sent it and what it asked for (a digest of its
-- type and data), so that a request_id reused for a different request is refused
-- instead of being taken for a retry; a refused one keeps the error frame that refused
-- it, so that a retry gets the same answer. Refused commands keep a row only when they
-- carried a request_id, and only each user's newest few (the index finds the rest).
ALTER TABLE processed_commands
    ADD COLUMN user_id     bigint,
    ADD COLUMN fingerprint bytea,
    ADD COLUMN answer      bytea;
CREATE INDEX processed_commands_refused_idx ON processed_commands (user_id, processed)
    WHERE answer IS NOT NULL;
