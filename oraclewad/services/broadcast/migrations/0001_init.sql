-- Broadcast service, schema version 1: campaigns, the tenant's contacts, and one message per
-- (campaign, contact). The applier runs this file inside one transaction and records it.

CREATE TABLE campaigns (
    id          bigserial   PRIMARY KEY,
    name        text        NOT NULL,
    templates   jsonb       NOT NULL DEFAULT '[]'::jsonb,  -- spintax templates, one picked per message
    status      text        NOT NULL DEFAULT 'draft'
                CHECK (status IN ('draft', 'scheduled', 'running', 'paused', 'completed', 'cancelled')),
    scheduled_at timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now(),
    started_at  timestamptz,
    finished_at timestamptz
);

-- Contacts are per tenant (each tenant has its own database), unique by phone across imports.
CREATE TABLE contacts (
    id           bigserial   PRIMARY KEY,
    phone        text        NOT NULL UNIQUE,
    name         text,
    attributes   jsonb       NOT NULL DEFAULT '{}'::jsonb,  -- extra CSV columns, for template fields
    opted_out_at timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- Senders claim rows (FOR UPDATE SKIP LOCKED, set claimed_by/claimed_at) so two processes never
-- send the same message; UNIQUE (campaign_id, contact_id) makes re-importing a CSV idempotent.
CREATE TABLE campaign_messages (
    id                  bigserial   PRIMARY KEY,
    campaign_id         bigint      NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    contact_id          bigint      NOT NULL REFERENCES contacts (id) ON DELETE CASCADE,
    body                text,                    -- rendered when claimed, kept for the record
    status              text        NOT NULL DEFAULT 'pending'
                        CHECK (status IN ('pending', 'claimed', 'sent', 'failed', 'skipped', 'cancelled')),
\ir ../../sql/outbox_columns.sql
    UNIQUE (campaign_id, contact_id)
);
CREATE INDEX campaign_messages_pending_idx ON campaign_messages (campaign_id, id) WHERE status = 'pending';
CREATE INDEX campaign_messages_provider_idx ON campaign_messages (provider_message_id)
    WHERE provider_message_id IS NOT NULL;
