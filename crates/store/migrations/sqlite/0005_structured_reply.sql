-- odmr store, SQLite schema version 5: a recipient's last reply kept as the reply it was.
-- Versions before 5 kept it flattened to one line of text (`last_reply`): the lines of a
-- multi-line reply ran together, and the notices parsed the enhanced status back out of it. Now
-- the reply is three columns, all NULL until a reply is recorded:
--   last_code    the reply code (250, 451, 550, ...)
--   last_status  its enhanced status code (RFC 3463), NULL when the reply had none
--   last_text    its text lines, without code and status, joined by LF (a reply line cannot
--                hold one: LF ends it on the wire)
ALTER TABLE recipient ADD COLUMN last_code INTEGER;
ALTER TABLE recipient ADD COLUMN last_status TEXT;
ALTER TABLE recipient ADD COLUMN last_text TEXT;

-- The old text was "CODE[ STATUS][ TEXT]". The second word is the status when it is
-- class.subject.detail of the code's class, subject and detail 1 to 3 digits: the rule the
-- reply parser (odmr_proto::reply) applied before it was flattened. The lines of an old
-- multi-line reply were joined by spaces and stay one line.
WITH old AS (
    SELECT id,
           CAST(substr(last_reply, 1, 3) AS INTEGER) AS code,
           ltrim(substr(last_reply, 4), ' ') AS rest
    FROM recipient
    WHERE last_reply GLOB '[0-9][0-9][0-9]' OR last_reply GLOB '[0-9][0-9][0-9] *'
), word AS (
    SELECT id, code, rest,
           CASE WHEN instr(rest, ' ') > 0 THEN substr(rest, 1, instr(rest, ' ') - 1) ELSE rest END AS w
    FROM old
), parsed AS (
    SELECT id, code, rest, w,
           (substr(w, 1, 1) = substr(CAST(code AS TEXT), 1, 1)
            AND substr(w, 2, 1) = '.'
            AND substr(w, 3) NOT GLOB '*[^0-9.]*'
            AND length(w) - length(replace(w, '.', '')) = 2
            AND (instr(substr(w, 3), '.') BETWEEN 2 AND 4)
            AND (length(substr(w, 3)) - instr(substr(w, 3), '.') BETWEEN 1 AND 3)) AS has_status
    FROM word
)
UPDATE recipient
SET last_code = parsed.code,
    last_status = CASE WHEN parsed.has_status THEN parsed.w END,
    last_text = CASE WHEN parsed.has_status THEN ltrim(substr(parsed.rest, length(parsed.w) + 1), ' ')
                     ELSE parsed.rest END
FROM parsed
WHERE recipient.id = parsed.id;

-- `odmr queue delete` wrote a note of its own where the reply goes; it now says so in `status`
-- and leaves the reply alone.
UPDATE recipient SET status = 'deleted'
WHERE last_reply = 'deleted by the operator' AND state = 'bounced';

-- Any other text without a code (none was ever written) is kept, for a person to read; the
-- program reads no reply without a code.
UPDATE recipient SET last_text = last_reply
WHERE last_code IS NULL AND last_reply IS NOT NULL AND last_reply <> 'deleted by the operator';

ALTER TABLE recipient DROP COLUMN last_reply;
