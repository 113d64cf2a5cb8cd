-- depends: 0007_sessions
-- Sessions end everywhere (PROTOCOL D1): every end of a session is a row here, which
-- the gateways read in commit order, however long the transaction that ended it took.
--
-- A row with a family ends that family (log-out, refresh-token reuse): every token
-- carrying its `sid` is refused. A row without one ends every session of the user up
-- to `ended_at` (deactivation, password change; `users.sessions_revoked_at` holds
-- the same moment for the lookups). `xid` is the ending transaction: a gateway keeps
-- the snapshot of its last look and reads exactly the rows committed since
-- (`gateway.revocations`). Rows are kept until no token they refuse can still be used.
CREATE TABLE session_ends (
    xid      xid8        NOT NULL DEFAULT pg_current_xact_id(),
    user_id  bigint      NOT NULL,
    family   uuid,
    ended_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX session_ends_xid_idx ON session_ends (xid);
CREATE INDEX session_ends_family_idx ON session_ends (family) WHERE family IS NOT NULL;
CREATE INDEX session_ends_user_idx ON session_ends (user_id, ended_at);
CREATE INDEX session_ends_ended_at_idx ON session_ends (ended_at);

-- Whatever path deactivates a user or changes a password (the API, an operator's SQL),
-- their sessions end with it, and the gateways hear of it once it commits.
CREATE OR REPLACE FUNCTION users_end_sessions() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (OLD.is_active AND NOT NEW.is_active)
       OR NEW.password_hash IS DISTINCT FROM OLD.password_hash THEN
        NEW.sessions_revoked_at := clock_timestamp();
        INSERT INTO session_ends (user_id, ended_at) VALUES (NEW.id, NEW.sessions_revoked_at);
    END IF;
    RETURN NEW;
END;
$$;
