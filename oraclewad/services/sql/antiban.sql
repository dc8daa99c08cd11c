-- backward-compatible: yes
-- The anti-ban engine's state (services/antiban): the same file is a migration of each service
-- (recovery 0003, broadcast 0002), so both keep their instances' pacing in their own database.

-- One row per instance the service sends through. The reservation locks these rows
-- (SELECT ... FOR UPDATE) so two processes of the service never share a slot.
CREATE TABLE antiban_instances (
    instance        text        PRIMARY KEY,
    seed            bigint      NOT NULL,          -- the draws' seed (rules.unit)
    seq             bigint      NOT NULL DEFAULT 0, -- reservations so far: indexes the gap draws
    first_open_at   timestamptz,                   -- first seen open: standby starts
    warm_day        date,                          -- warm-up day 1 (moved back by idle drop-backs)
    manual_count    integer     NOT NULL DEFAULT 0,
    batch_count     integer     NOT NULL DEFAULT 0,
    free_at         timestamptz,                   -- no reservation before (gap landed, batch pause)
    last_send_at    timestamptz,                   -- when the last message landed
    last_drop_at    timestamptz,
    lease_token     text,
    lease_lands_at  timestamptz,
    lease_until     timestamptz,                   -- a lease nobody released frees the instance then
    out_reason      text,                          -- out of rotation (failure rate) until open again
    attest_network  text,                          -- '4g' | 'proxy'
    attest_groups   integer,
    attest_recharge date,
    attested_at     timestamptz
);

-- A day's cap, drawn once per instance and day, and what was charged against it.
CREATE TABLE antiban_days (
    instance text    NOT NULL,
    day      date    NOT NULL,
    stage    integer NOT NULL,
    cap      integer NOT NULL,
    sent     integer NOT NULL DEFAULT 0,
    PRIMARY KEY (instance, day)
);

-- Recent reservations: the same-text limit, the last-10 failure rate, our own message ids.
CREATE TABLE antiban_sends (
    id          bigserial   PRIMARY KEY,
    instance    text        NOT NULL,
    token       text        NOT NULL UNIQUE,
    text_hash   bytea,
    reserved_at timestamptz NOT NULL,
    lands_at    timestamptz NOT NULL,
    ok          boolean,                           -- NULL: in flight or outcome unknown
    message_id  text
);
CREATE INDEX antiban_sends_instance_idx ON antiban_sends (instance, reserved_at);
CREATE INDEX antiban_sends_text_idx ON antiban_sends (instance, text_hash, reserved_at);

-- Numbers Evolution answered exists:false: never tried again (each lookup is a ban risk).
CREATE TABLE antiban_invalid_numbers (
    phone    text        PRIMARY KEY,
    instance text,
    noted_at timestamptz NOT NULL
);

-- Manual messages seen (fromMe upserts we did not send), de-duplicated by message id.
CREATE TABLE antiban_manual (
    instance   text NOT NULL,
    message_id text NOT NULL,
    PRIMARY KEY (instance, message_id)
);
