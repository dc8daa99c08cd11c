CREATE TABLE opt_outs (
    phone       text        PRIMARY KEY,
    instance    text        NOT NULL,
    word        text        NOT NULL,
    at          timestamptz NOT NULL
);
