    claimed_by          text,
    claimed_at          timestamptz,
    sent_at             timestamptz,
    attempts            integer     NOT NULL DEFAULT 0,
    last_error          text,
    instance            text,                    -- Evolution instance that sent it
    provider_message_id text,                    -- Evolution's key.id, to match messages.update
    created_at          timestamptz NOT NULL DEFAULT now(),
