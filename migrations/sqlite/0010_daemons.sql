-- Several daemons on one database. Each one alive has a row, renewed on the database's clock
-- (Unix ms); one of them leads (plans and moves windows on) while its lease lasts.
CREATE TABLE daemons (
    name        TEXT    PRIMARY KEY,        -- daemon@host:pid, the owner on its claims
    started_at  INTEGER  NOT NULL,
    seen_at     INTEGER  NOT NULL,
    alive_until INTEGER  NOT NULL,             -- seen_at + the lease: past it, the daemon is gone
    sent        INTEGER  NOT NULL DEFAULT 0,   -- deliveries it recorded sent since it started
    rate        REAL NOT NULL DEFAULT 0    -- sent per second between its last two beats
);

CREATE TABLE leader (
    role   TEXT   PRIMARY KEY,              -- 'scheduler'
    owner  TEXT   NOT NULL,
    since  INTEGER NOT NULL,
    until  INTEGER NOT NULL
);

-- Windows whose deliveries no daemon claims until they are resumed.
CREATE TABLE paused_windows (
    window_id  INTEGER PRIMARY KEY REFERENCES windows (id),
    paused_at  INTEGER NOT NULL,
    actor      TEXT   NOT NULL
);
