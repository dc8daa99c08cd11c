-- Recovery service, schema version 4: messages.update events that arrive before we know their id.
-- backward-compatible: yes
-- (it only adds a table and an index: a release of schema 3 never looks at them)

\ir ../../sql/held_acks.sql
-- Rows an unknown id may belong to: sent or in flight without a known id.
CREATE INDEX outbound_messages_unresolved_idx ON outbound_messages (instance, phone, claimed_at)
    WHERE provider_message_id IS NULL AND status IN ('sending', 'uncertain');
