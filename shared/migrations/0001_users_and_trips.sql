-- Users (riders and drivers) and their trips.

CREATE TABLE users (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    username      text        NOT NULL,
    password_hash text        NOT NULL,
    first_name    text        NOT NULL DEFAULT '',
    last_name     text        NOT NULL DEFAULT '',
    user_group    text        NOT NULL CHECK (user_group IN ('rider', 'driver')),
    photo         text,
    is_active     boolean     NOT NULL DEFAULT true,
    created       timestamptz NOT NULL DEFAULT now(),
    updated       timestamptz NOT NULL DEFAULT now()
);

-- Usernames are e-mail addresses in practice: "Ann@x.com" and "ann@x.com" are one user.
CREATE UNIQUE INDEX users_username_key ON users (lower(username));

CREATE TABLE trips (
    id               uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    created          timestamptz NOT NULL DEFAULT now(),
    updated          timestamptz NOT NULL DEFAULT now(),
    pick_up_address  text        NOT NULL,
    drop_off_address text        NOT NULL,
    status           text        NOT NULL DEFAULT 'REQUESTED'
        CHECK (status IN ('REQUESTED', 'STARTED', 'IN_PROGRESS', 'COMPLETED', 'CANCELLED')),
    rider_id         bigint      NOT NULL REFERENCES users (id),
    driver_id        bigint      REFERENCES users (id),
    CHECK ((status = 'REQUESTED') = (driver_id IS NULL) OR status = 'CANCELLED')
);

CREATE INDEX trips_rider_id_idx ON trips (rider_id, created DESC);
CREATE INDEX trips_driver_id_idx ON trips (driver_id, created DESC);
CREATE INDEX trips_requested_idx ON trips (created DESC) WHERE status = 'REQUESTED';

-- The last line of defence for "a driver holds at most one active trip": two
-- workers racing past every other check still cannot both commit.
CREATE UNIQUE INDEX trips_one_active_per_driver
    ON trips (driver_id) WHERE status IN ('STARTED', 'IN_PROGRESS');
