-- Broadcast service, schema version 4: messages.update events that arrive before we know their id.
-- backward-compatible: yes
-- (it only adds a table and an index: a release of schema 3 never looks at them; until now an
-- unknown id was matched by phone, and the same number in two campaigns could take the wrong ack)

\ir ../../sql/held_acks.sql
-- Recipients an unknown id may belong to: sent or in flight without a known id.
CREATE INDEX recipients_unresolved_idx ON recipients (instance, phone, claimed_at)
    WHERE provider_message_id IS NULL AND status IN ('sending', 'uncertain');
