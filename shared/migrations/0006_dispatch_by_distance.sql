-- depends: 0005_trip_points
-- A trip with a pick-up point is offered in rings: first to the nearest free drivers
-- within a radius, then, whenever nobody has accepted in time, to the next nearest
-- within twice that radius. The trip keeps the radius of its last ring and when the
-- next one is due; any worker sweeping finds due rings, even after every worker was
-- restarted. `trip_offers` names who was offered the trip while it is open, so they
-- are told when it is taken or cancelled; the rows go when the trip leaves REQUESTED.

ALTER TABLE trips
    ADD COLUMN offer_radius_m double precision CHECK (offer_radius_m > 0),
    ADD COLUMN widen_at       timestamptz;

-- The widening sweep reads the due rings of open requests only.
CREATE INDEX trips_widen_due_idx ON trips (widen_at)
    WHERE status = 'REQUESTED' AND widen_at IS NOT NULL;

CREATE TABLE trip_offers (
    trip_id    uuid             NOT NULL REFERENCES trips (id) ON DELETE CASCADE,
    driver_id  bigint           NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    distance_m double precision NOT NULL CHECK (distance_m >= 0),
    ring       smallint         NOT NULL CHECK (ring >= 1),
    PRIMARY KEY (trip_id, driver_id)
);
