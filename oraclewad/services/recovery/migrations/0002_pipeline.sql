-- Recovery service, schema version 2: de-duplicated webhooks, orders, sequences, Evolution events.

-- A delivery is the same event again when its delivery id (Standard Webhooks' webhook-id) or its
-- (order, event) pair was seen: the INSERT ... ON CONFLICT DO NOTHING of the ingest relies on these.
ALTER TABLE webhook_events ADD COLUMN delivery_id text, ADD COLUMN scheme text;
CREATE UNIQUE INDEX webhook_events_delivery_uq ON webhook_events (delivery_id) WHERE delivery_id IS NOT NULL;
CREATE UNIQUE INDEX webhook_events_order_event_uq ON webhook_events (order_id, event_kind);

-- What we know of an order; the report reads it (recovered = paid after a reminder went out).
CREATE TABLE orders (
    order_id      text        PRIMARY KEY,
    customer_name text        NOT NULL,
    phone_raw     text        NOT NULL,
    phone         text,                      -- E.164 without '+', NULL when the number is impossible
    product       text        NOT NULL,
    total         numeric(14, 2) NOT NULL,
    pix_code      text,
    expires_at    timestamptz,
    expired_at    timestamptz,               -- order.expired received
    paid_at       timestamptz,               -- order.paid received
    reminded_at   timestamptz,               -- first reminder accepted by Evolution
    recovered     boolean     NOT NULL DEFAULT false,
    updated_at    timestamptz NOT NULL
);
CREATE INDEX orders_expired_idx ON orders (expired_at);
CREATE INDEX orders_paid_idx ON orders (paid_at);

-- Messages: 'sending' is claimed (outcome unknown until recorded); a 'sending' row whose process
-- died, or whose send timed out after the request left, becomes 'uncertain' and is never resent.
ALTER TABLE outbound_messages DROP CONSTRAINT outbound_messages_status_check;
UPDATE outbound_messages SET status = 'sending' WHERE status = 'claimed';
ALTER TABLE outbound_messages
    ADD CONSTRAINT outbound_messages_status_check CHECK (status IN (
        'pending', 'sending', 'sent', 'delivered', 'read', 'failed', 'cancelled', 'dropped',
        'invalid', 'suppressed', 'uncertain')),
    ADD COLUMN order_id   text,
    ADD COLUMN step       integer NOT NULL DEFAULT 0,    -- 1.. reminder steps, 0 thank-you
    ADD COLUMN due_at     timestamptz,                    -- when the sequence wanted it
    ADD COLUMN expires_at timestamptz,                    -- past this it is dropped (max_age)
    ADD COLUMN reason     text,                           -- why dropped/failed/invalid/uncertain
    ADD COLUMN status_at  timestamptz,
    ADD COLUMN send_ms    double precision;               -- Evolution's answer time
CREATE INDEX outbound_messages_order_idx ON outbound_messages (order_id);
CREATE INDEX outbound_messages_sending_idx ON outbound_messages (claimed_at) WHERE status = 'sending';

-- Messages typed on the phone (fromMe upserts we did not send): the anti-ban rules count them.
CREATE TABLE manual_messages (
    message_id  text        PRIMARY KEY,
    instance    text        NOT NULL,
    remote_jid  text        NOT NULL,
    at          timestamptz NOT NULL
);

-- Opt-outs seen on this service's instances (the tenant-wide list lives in the shared database).
\ir ../../sql/opt_outs.sql
