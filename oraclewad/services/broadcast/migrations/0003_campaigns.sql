-- Broadcast service, schema version 3: campaigns with their own recipients, claim-based sending.
-- Version 1's contacts/campaign_messages were never written by any release (the service was a stub).

DROP TABLE campaign_messages;
DROP TABLE contacts;

ALTER TABLE campaigns
    ADD COLUMN updated_at   timestamptz,
    ADD COLUMN paused_at    timestamptz,
    ADD COLUMN columns      jsonb NOT NULL DEFAULT '[]'::jsonb,  -- CSV columns seen, for {{variables}}
    ADD COLUMN eta_at_start timestamptz,                         -- the ETA shown when it started
    ADD COLUMN last_eta     timestamptz;

-- One row per recipient of a campaign. Senders claim rows (FOR UPDATE SKIP LOCKED, then
-- status 'sending' committed before any byte goes to Evolution), so a recipient gets at most one
-- message per campaign across crashes, restarts and release swaps: a 'sending' row whose process
-- died becomes 'uncertain' and is never sent again. body is rendered once (at the first claim,
-- seeded by campaign and phone) and kept: a retry sends the same text.
CREATE TABLE recipients (
    id                  bigserial   PRIMARY KEY,
    campaign_id         bigint      NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    phone               text        NOT NULL,               -- E.164 digits without '+'
    name                text        NOT NULL DEFAULT '',
    vars                jsonb       NOT NULL DEFAULT '{}'::jsonb,  -- the other CSV columns
    line                integer,                           -- line in its import file
    status              text        NOT NULL DEFAULT 'pending'
                        CHECK (status IN ('pending', 'sending', 'sent', 'delivered', 'read', 'failed',
                                          'invalid', 'suppressed', 'uncertain', 'cancelled')),
    body                text,
    send_after          timestamptz,                       -- a retry's earliest time
    instance            text,
    claimed_by          text,
    claimed_at          timestamptz,
    attempts            integer     NOT NULL DEFAULT 0,
    provider_message_id text,
    reason              text,
    status_at           timestamptz,
    sent_at             timestamptz,
    UNIQUE (campaign_id, phone)
);
CREATE INDEX recipients_pending_idx ON recipients (campaign_id, id) WHERE status = 'pending';
CREATE INDEX recipients_sending_idx ON recipients (claimed_at) WHERE status = 'sending';
CREATE INDEX recipients_provider_idx ON recipients (provider_message_id)
    WHERE provider_message_id IS NOT NULL;
CREATE INDEX recipients_instance_phone_idx ON recipients (instance, phone)
    WHERE status IN ('sending', 'uncertain');

-- `oraclectl campaign test`: the rendered message sent to a test number before the start.
CREATE TABLE campaign_tests (
    id                  bigserial   PRIMARY KEY,
    campaign_id         bigint      NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    phone               text        NOT NULL,
    body                text        NOT NULL,
    instance            text,
    provider_message_id text,
    status              text        NOT NULL,
    at                  timestamptz NOT NULL
);

-- Opt-outs seen on this service's instances (the tenant-wide list lives in the shared database;
-- manual messages are the anti-ban engine's, in its antiban_* tables).
\ir ../../sql/opt_outs.sql
