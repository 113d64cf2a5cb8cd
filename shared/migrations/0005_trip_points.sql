-- depends: 0004_notification_log_and_trip_lifecycle
-- A trip may carry the rider's pick-up and drop-off points (WGS84 degrees), so it is
-- offered to the nearest drivers first. Trips requested without them keep NULLs.
-- The checks repeat the gateway's: a row written by any other path is still a place
-- on the earth (NaN and infinity fail BETWEEN too), and never half a point.

ALTER TABLE trips
    ADD COLUMN pick_up_lat  double precision CHECK (pick_up_lat BETWEEN -90 AND 90),
    ADD COLUMN pick_up_lng  double precision CHECK (pick_up_lng BETWEEN -180 AND 180),
    ADD COLUMN drop_off_lat double precision CHECK (drop_off_lat BETWEEN -90 AND 90),
    ADD COLUMN drop_off_lng double precision CHECK (drop_off_lng BETWEEN -180 AND 180),
    ADD CONSTRAINT trips_pick_up_whole CHECK ((pick_up_lat IS NULL) = (pick_up_lng IS NULL)),
    ADD CONSTRAINT trips_drop_off_whole CHECK ((drop_off_lat IS NULL) = (drop_off_lng IS NULL));
