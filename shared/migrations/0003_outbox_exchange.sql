-- depends: 0002_dispatch
-- Each outbox row names the exchange it is for, so that deployments (or test
-- runs) with different broker prefixes sharing one database relay only their own,
-- and the type of the frame it carries, which travels as the message's AMQP type.
ALTER TABLE outbox ADD COLUMN exchange text NOT NULL DEFAULT '';
ALTER TABLE outbox ADD COLUMN frame_type text NOT NULL DEFAULT '';
CREATE INDEX outbox_exchange_id_idx ON outbox (exchange, id);
