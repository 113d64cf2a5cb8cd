-- depends: 0002_dispatch
-- Each outbox row names the exchange it is for, so that deployments (or test
-- runs) with different broker prefixes sharing one database relay only their own.
ALTER TABLE outbox ADD COLUMN exchange text NOT NULL DEFAULT '';
CREATE INDEX outbox_exchange_id_idx ON outbox (exchange, id);
