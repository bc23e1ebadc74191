-- odmr store, SQLite schema version 3: leases broken by the operator.
-- `odmr lease break` deletes the lease's row, so the domain is free for the next taker at once,
-- and notes the lease's token here, so that the holder, whose next write or renewal is refused,
-- can tell the operator's action from an expiry or a takeover, even after another session took
-- the domain. A holder notices within a third of its lease's time to live (at most an hour), so
-- a row is kept a day, then removed by a later break.
CREATE TABLE lease_broken (
    token      TEXT    PRIMARY KEY NOT NULL,
    broken_at  INTEGER NOT NULL                     -- unix milliseconds
);
