-- Several daemons on one database. Each one alive has a row, renewed on the database's clock
-- (Unix ms); one of them leads (plans and moves windows on) while its lease lasts.
CREATE TABLE daemons (
    name        TEXT    PRIMARY KEY,        -- daemon@host:pid, the owner on its claims
    started_at  BIGINT  NOT NULL,
    seen_at     BIGINT  NOT NULL,
    alive_until BIGINT  NOT NULL,             -- seen_at + the lease: past it, the daemon is gone
    sent        BIGINT  NOT NULL DEFAULT 0,   -- deliveries it recorded sent since it started
    rate        DOUBLE PRECISION NOT NULL DEFAULT 0    -- sent per second between its last two beats
);

CREATE TABLE leader (
    role   TEXT   PRIMARY KEY,              -- 'scheduler'
    owner  TEXT   NOT NULL,
    since  BIGINT NOT NULL,
    until  BIGINT NOT NULL
);

-- Windows whose deliveries no daemon claims until they are resumed.
CREATE TABLE paused_windows (
    window_id  BIGINT PRIMARY KEY REFERENCES windows (id),
    paused_at  BIGINT NOT NULL,
    actor      TEXT   NOT NULL
);
