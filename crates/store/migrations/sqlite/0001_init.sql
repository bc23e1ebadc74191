-- odmr store, SQLite schema version 1.
-- Applied by src/sqlite/mod.rs inside one BEGIN IMMEDIATE transaction, versioned by
-- PRAGMA user_version. Keep it portable where it costs nothing: the PostgreSQL backend mirrors it.

CREATE TABLE account (
    name        TEXT    PRIMARY KEY NOT NULL,
    created_at  INTEGER NOT NULL                      -- unix seconds
);

CREATE TABLE credential (
    account  TEXT NOT NULL REFERENCES account (name) ON DELETE CASCADE,
    scheme   TEXT NOT NULL,                           -- e.g. 'cram-md5'
    data     BLOB NOT NULL,                           -- opaque, produced by the auth code
    PRIMARY KEY (account, scheme)
);

-- A domain belongs to at most one account; names are stored lower-case.
CREATE TABLE domain (
    name     TEXT PRIMARY KEY NOT NULL,
    account  TEXT NOT NULL REFERENCES account (name) ON DELETE CASCADE
);
CREATE INDEX domain_account ON domain (account);

-- AUTOINCREMENT: ids never come back, so paging with "id > after" never skips a message.
CREATE TABLE message (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    state        TEXT    NOT NULL CHECK (state IN ('receiving', 'queued')),
    -- queued: unix seconds of the commit; receiving: of the last chunk written (for the purge of
    -- abandoned messages)
    received_at  INTEGER NOT NULL,
    size         INTEGER NOT NULL DEFAULT 0,
    eight_bit    INTEGER NOT NULL DEFAULT 0 CHECK (eight_bit IN (0, 1)),
    mail_from    TEXT    NOT NULL,
    mail_params  TEXT    NOT NULL,
    helo         TEXT    NOT NULL,
    client_addr  TEXT    NOT NULL
);
CREATE INDEX message_state ON message (state, received_at);

-- Chunks of CHUNK_SIZE bytes (the last may be shorter), seq from 0; an empty body has none.
CREATE TABLE body_chunk (
    message  INTEGER NOT NULL REFERENCES message (id) ON DELETE CASCADE,
    seq      INTEGER NOT NULL,
    data     BLOB    NOT NULL,
    PRIMARY KEY (message, seq)
);

-- Written only in the commit transaction of its message.
CREATE TABLE recipient (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    message     INTEGER NOT NULL REFERENCES message (id) ON DELETE CASCADE,
    address     TEXT    NOT NULL,                     -- as received, without brackets
    domain      TEXT    NOT NULL,                     -- after the last '@', lower-case
    params      TEXT    NOT NULL,
    state       TEXT    NOT NULL CHECK (state IN ('queued', 'delivered', 'failed')),
    last_reply  TEXT,
    attempts    INTEGER NOT NULL DEFAULT 0,
    updated_at  INTEGER NOT NULL                      -- unix seconds
);
CREATE INDEX recipient_domain_state ON recipient (domain, state, message);
CREATE INDEX recipient_message ON recipient (message, state);

-- One row per leased domain: the only lock. Rows of expired leases are taken over.
CREATE TABLE lease (
    domain      TEXT    PRIMARY KEY NOT NULL,
    token       TEXT    NOT NULL,
    holder      TEXT    NOT NULL,
    expires_at  INTEGER NOT NULL                      -- unix milliseconds
);
CREATE INDEX lease_token ON lease (token);
