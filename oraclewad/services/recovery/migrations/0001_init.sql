-- Recovery service, schema version 1: what the shop told us, and what we send because of it.
-- The applier runs this file inside one transaction and records it in schema_migrations.

-- Every order webhook as received, kept verbatim (payload) so a bad template can be replayed.
CREATE TABLE webhook_events (
    id          bigserial   PRIMARY KEY,
    received_at timestamptz NOT NULL DEFAULT now(),
    event_kind  text        NOT NULL,            -- e.g. 'order_expired', 'order_paid'
    order_id    text,
    payload     jsonb       NOT NULL,
    status      text        NOT NULL DEFAULT 'received'
);
CREATE INDEX webhook_events_order_idx ON webhook_events (order_id, received_at);

-- One row per message to send. Senders claim rows (FOR UPDATE SKIP LOCKED, set claimed_by/claimed_at)
-- so two processes of the service never send the same row; UNIQUE (webhook_event_id, kind) makes a
-- retried insert for the same event a no-op instead of a second message.
CREATE TABLE outbound_messages (
    id                  bigserial   PRIMARY KEY,
    webhook_event_id    bigint      NOT NULL REFERENCES webhook_events (id) ON DELETE CASCADE,
    kind                text        NOT NULL,    -- e.g. 'pix_reminder', 'thank_you'
    phone               text        NOT NULL,
    body                text        NOT NULL,
    status              text        NOT NULL DEFAULT 'pending'
                        CHECK (status IN ('pending', 'claimed', 'sent', 'failed', 'cancelled')),
    send_after          timestamptz NOT NULL DEFAULT now(),
\ir ../../sql/outbox_columns.sql
    UNIQUE (webhook_event_id, kind)
);
-- The claim query's path: due pending rows, oldest first.
CREATE INDEX outbound_messages_due_idx ON outbound_messages (send_after) WHERE status = 'pending';
CREATE INDEX outbound_messages_provider_idx ON outbound_messages (provider_message_id)
    WHERE provider_message_id IS NOT NULL;
