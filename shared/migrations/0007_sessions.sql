-- depends: 0006_dispatch_by_distance
-- Sessions that can end: refresh tokens rotate in families, a log-out ends a family,
-- and deactivating a user or changing their password ends every session they have.

-- Tokens issued before this moment are refused, and sockets opened with them closed.
ALTER TABLE users ADD COLUMN sessions_revoked_at timestamptz;
CREATE INDEX users_sessions_revoked_idx ON users (sessions_revoked_at)
    WHERE sessions_revoked_at IS NOT NULL;

-- Whatever path deactivates a user or changes a password (the API, an operator's
-- SQL), their sessions end with it.
CREATE FUNCTION users_end_sessions() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (OLD.is_active AND NOT NEW.is_active)
       OR NEW.password_hash IS DISTINCT FROM OLD.password_hash THEN
        NEW.sessions_revoked_at := clock_timestamp();
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER users_end_sessions BEFORE UPDATE OF is_active, password_hash ON users
    FOR EACH ROW EXECUTE FUNCTION users_end_sessions();

-- Every refresh token given out and not yet expired. Using one marks it used and
-- gives the next of its family; using one a second time ends the whole family (a
-- stolen token and its owner cannot both go on). Ending a family deletes its rows.
CREATE TABLE refresh_tokens (
    jti     uuid        PRIMARY KEY,
    family  uuid        NOT NULL,
    user_id bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    expires timestamptz NOT NULL,
    used    boolean     NOT NULL DEFAULT false
);
CREATE INDEX refresh_tokens_family_idx ON refresh_tokens (family);
CREATE INDEX refresh_tokens_expires_idx ON refresh_tokens (expires);
