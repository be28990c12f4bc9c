-- Instants are INTEGER milliseconds since the Unix epoch (UTC), as in the PostgreSQL schema.
CREATE TABLE windows (
    id             INTEGER PRIMARY KEY,
    title_en       TEXT    NOT NULL,
    title_sw       TEXT,
    description_en TEXT    NOT NULL DEFAULT '',
    description_sw TEXT,
    components     TEXT    NOT NULL,            -- comma-separated component ids
    starts_at      INTEGER NOT NULL,
    ends_at        INTEGER NOT NULL,
    prev_starts_at INTEGER NOT NULL,
    prev_ends_at   INTEGER NOT NULL,
    zone           TEXT    NOT NULL,
    status         TEXT    NOT NULL CHECK (status IN ('scheduled', 'in_progress', 'completed', 'cancelled')),
    revision       INTEGER NOT NULL,
    last_change    TEXT    NOT NULL,
    auto_complete  BOOLEAN NOT NULL,
    cancel_reason  TEXT,
    created_at     INTEGER NOT NULL,
    revised_at     INTEGER NOT NULL,
    closed         BOOLEAN NOT NULL DEFAULT FALSE,  -- every notice decided; the scheduler skips it
    CHECK (ends_at > starts_at)
);

CREATE TABLE window_history (
    id        INTEGER PRIMARY KEY,
    window_id INTEGER NOT NULL REFERENCES windows (id),
    revision  INTEGER NOT NULL,
    at        INTEGER NOT NULL,
    actor     TEXT    NOT NULL,
    action    TEXT    NOT NULL,
    details   TEXT    NOT NULL
);
CREATE INDEX window_history_by_window ON window_history (window_id, id);

-- The notice log: one row per (window, revision, notice, audience) once decided.
CREATE TABLE window_notices (
    window_id  INTEGER NOT NULL REFERENCES windows (id),
    revision   INTEGER NOT NULL,
    notice     TEXT    NOT NULL,
    audience   TEXT    NOT NULL,
    outcome    TEXT    NOT NULL,
    due_at     INTEGER NOT NULL,
    deadline   INTEGER NOT NULL,
    decided_at INTEGER NOT NULL,
    PRIMARY KEY (window_id, revision, notice, audience)
);

CREATE TABLE recipients (
    id          INTEGER PRIMARY KEY,
    natural_key TEXT    NOT NULL UNIQUE,        -- phone (E.164), else email
    kind        TEXT    NOT NULL CHECK (kind IN ('customer', 'biller')),
    name        TEXT    NOT NULL,
    phone       TEXT,
    email       TEXT,
    locale      TEXT    NOT NULL,
    zone        TEXT    NOT NULL,
    components  TEXT    NOT NULL DEFAULT '',    -- comma-separated; empty = all
    channels    TEXT    NOT NULL DEFAULT '',    -- comma-separated; empty = every channel with an address
    opt_out     BOOLEAN NOT NULL DEFAULT FALSE,
    seed        BOOLEAN NOT NULL DEFAULT FALSE,  -- a canary address (staff), never in an audience
    updated_at  INTEGER NOT NULL
);
CREATE INDEX recipients_by_kind ON recipients (kind, id);

-- Rendered bodies, stored once per (window, revision, notice, channel, locale, zone).
CREATE TABLE bodies (
    id        INTEGER PRIMARY KEY,
    cache_key TEXT NOT NULL UNIQUE,
    content   TEXT NOT NULL
);

-- Ad-hoc broadcasts: a window notice or a free message sent to a filtered audience.
CREATE TABLE broadcasts (
    id         INTEGER PRIMARY KEY,
    name       TEXT    NOT NULL UNIQUE,          -- makes a rerun idempotent
    window_id  INTEGER REFERENCES windows (id),      -- a window notice ...
    revision   INTEGER,
    notice     TEXT,
    message    TEXT,                             -- ... or a free message: JSON by locale
    filter     TEXT    NOT NULL,                 -- JSON: who it is for
    deadline   INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    actor      TEXT    NOT NULL,
    CHECK ((window_id IS NOT NULL AND notice IS NOT NULL) OR message IS NOT NULL)
);

-- The queue and the ledger.
CREATE TABLE deliveries (
    id           INTEGER PRIMARY KEY,
    window_id    INTEGER REFERENCES windows (id),
    broadcast_id INTEGER REFERENCES broadcasts (id),
    revision     INTEGER NOT NULL,
    notice       TEXT    NOT NULL,
    recipient_id INTEGER NOT NULL REFERENCES recipients (id),
    channel      TEXT    NOT NULL,
    state        TEXT    NOT NULL DEFAULT 'pending'
                 CHECK (state IN ('pending', 'claimed', 'sent', 'failed', 'expired', 'superseded')),
    attempts     INTEGER NOT NULL DEFAULT 0,
    due_at       INTEGER NOT NULL,
    deadline     INTEGER NOT NULL,
    last_error   TEXT,
    sent_at      INTEGER,
    backend      TEXT,
    provider_id  TEXT,
    body_id      INTEGER REFERENCES bodies (id),
    lease_owner  TEXT,
    lease_until  INTEGER,
    CHECK (window_id IS NOT NULL OR broadcast_id IS NOT NULL)
);
-- The idempotency keys: a window's own notices, and each broadcast's rows.
CREATE UNIQUE INDEX deliveries_key ON deliveries (window_id, revision, notice, recipient_id, channel)
    WHERE broadcast_id IS NULL;
CREATE UNIQUE INDEX deliveries_broadcast_key ON deliveries (broadcast_id, recipient_id, channel)
    WHERE broadcast_id IS NOT NULL;
CREATE INDEX deliveries_due ON deliveries (due_at, id) WHERE state = 'pending';
CREATE INDEX deliveries_expiry ON deliveries (deadline) WHERE state = 'pending';
CREATE INDEX deliveries_claimed ON deliveries (lease_until) WHERE state = 'claimed';
CREATE INDEX deliveries_told ON deliveries (window_id, recipient_id) WHERE state = 'sent';
