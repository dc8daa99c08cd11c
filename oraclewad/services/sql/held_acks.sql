-- Evolution posts the SERVER_ACK of a send while its sendText answer (which carries the id) is
-- still on its way, so an ack can name an id no row holds yet. Guessing its row by phone would
-- pin it on the wrong message (several messages to one customer, or a row of a sender that died
-- before its send left): such an ack waits here until the answer brings the id (record_sent), or,
-- once no send that was in flight when it came can still claim it, resolves an `uncertain` row.
CREATE TABLE held_acks (
    provider_message_id text        PRIMARY KEY,
    instance            text        NOT NULL,
    phone               text,                    -- E.164 digits, NULL when the event named none
    status              text        NOT NULL,    -- our status: sent, delivered, read, failed
    received_at         timestamptz NOT NULL
);
CREATE INDEX held_acks_received_idx ON held_acks (received_at);

