-- odmr store, SQLite schema version 2: the queue's whole life.
-- Bounces and delay warnings, expiry, per-domain quotas and recipient lists, operator holds,
-- ETRN destinations, and the outbound queue (notices waiting for the bounce relay).

-- ETRN: where the account's mail goes when it asks with ETRN, and from which networks it may ask
-- without authenticating (CIDRs, space separated; '' for none).
ALTER TABLE account ADD COLUMN etrn_destination TEXT;
ALTER TABLE account ADD COLUMN etrn_from TEXT NOT NULL DEFAULT '';

-- Per-domain policy; NULL means "no limit" or "the server's default".
ALTER TABLE domain ADD COLUMN max_messages INTEGER;
ALTER TABLE domain ADD COLUMN max_bytes INTEGER;
ALTER TABLE domain ADD COLUMN max_age INTEGER;                        -- seconds
-- 1: any local part is accepted; 0: only those in local_part.
ALTER TABLE domain ADD COLUMN catch_all INTEGER NOT NULL DEFAULT 1 CHECK (catch_all IN (0, 1));

CREATE TABLE local_part (
    domain  TEXT NOT NULL REFERENCES domain (name) ON DELETE CASCADE,
    name    TEXT NOT NULL,                                            -- lower-case
    PRIMARY KEY (domain, name)
);

-- The recipient table gains states and the facts a delivery status notification needs. SQLite
-- cannot change a CHECK constraint in place, so the table is rebuilt (ids are kept).
--   held:    stopped by the operator; not delivered, not expired, until released
--   failed:  refused for good (5xx), expired, or bounced by the operator; a notice is due
--   bounced: the notice was queued (or none was wanted); final, like delivered
CREATE TABLE recipient_v2 (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    message     INTEGER NOT NULL REFERENCES message (id) ON DELETE CASCADE,
    address     TEXT    NOT NULL,
    domain      TEXT    NOT NULL,
    params      TEXT    NOT NULL,
    state       TEXT    NOT NULL
                CHECK (state IN ('queued', 'held', 'delivered', 'failed', 'bounced')),
    last_reply  TEXT,
    attempts    INTEGER NOT NULL DEFAULT 0,
    updated_at  INTEGER NOT NULL,
    remote_mta  TEXT,                                                 -- who gave last_reply
    status      TEXT,                                                 -- RFC 3463 code of a local failure
    warned      INTEGER NOT NULL DEFAULT 0 CHECK (warned IN (0, 1))   -- delay warning handled
);
INSERT INTO recipient_v2 (id, message, address, domain, params, state, last_reply, attempts, updated_at)
    SELECT id, message, address, domain, params, state, last_reply, attempts, updated_at FROM recipient;
DROP TABLE recipient;
ALTER TABLE recipient_v2 RENAME TO recipient;
CREATE INDEX recipient_domain_state ON recipient (domain, state, message);
CREATE INDEX recipient_message ON recipient (message, state);
-- The bounce job looks for failed recipients without scanning the queue.
CREATE INDEX recipient_failed ON recipient (message) WHERE state = 'failed';
