-- depends: 0012_open_sockets
-- Offers have a window and an answer (PROTOCOL D2). An offer by name is open until its
-- driver accepts, declines it, or lets it run past `expires_at` (TAXI_OFFER_SECONDS);
-- a declined or expired offer keeps its row, with its answer, while the trip is open, so
-- that the trip is never offered to that driver again, whichever worker rings or
-- matches next, also after every worker was restarted. The rows still go when the trip
-- leaves REQUESTED.
--
-- A driver who declines a trip without a pick-up point (offered to every free driver by
-- broadcast, not by name) gets a row too, answered at once: it keeps the trip out of
-- their list. Such a row has no distance.

ALTER TABLE trip_offers
    ALTER COLUMN distance_m DROP NOT NULL,
    ADD COLUMN offered_at timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN expires_at timestamptz,
    ADD COLUMN answer     text CHECK (answer IN ('declined', 'expired'));

-- The expiry sweep reads the open offers whose window has passed.
CREATE INDEX trip_offers_open_expiry_idx ON trip_offers (expires_at)
    WHERE answer IS NULL AND expires_at IS NOT NULL;
-- The matched policy offers a driver one trip at a time: it asks which candidates hold
-- an open offer already.
CREATE INDEX trip_offers_open_driver_idx ON trip_offers (driver_id) WHERE answer IS NULL;
