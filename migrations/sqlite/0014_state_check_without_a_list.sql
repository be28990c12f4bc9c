-- The check on a delivery's state names each state in turn instead of listing them. SQLite
-- codes `state IN (…six states…)` in a row's check as a temporary index of the six, built
-- again for every row written: six index inserts, and the index cleared, each time a row is
-- planned and again each time it is claimed or recorded sent. The states allowed are the same.
--
-- SQLite cannot change a constraint, so the table is built again as in migration 0013: its
-- rows are copied aside, the table dropped and made anew, and the rows copied back. On a large
-- ledger this migration takes a while and needs room for two more copies of the table. The
-- attempts log's checks wait for the end of the migration (`defer_foreign_keys`).
PRAGMA defer_foreign_keys = ON;
CREATE TABLE deliveries_before_0014 AS SELECT id, window_id, broadcast_id, revision, notice, recipient_id, channel, state, attempts,
    due_at, deadline, last_error, sent_at, backend, provider_id, body_id, lease_owner, lease_until, lease_token,
    possibly_duplicate, endpoint_id, handset, handset_at, sent_latency_ms
FROM deliveries;
DROP TABLE deliveries;
CREATE TABLE deliveries (
    id                 INTEGER PRIMARY KEY,
    window_id          INTEGER,
    broadcast_id       INTEGER,
    revision           INTEGER NOT NULL,
    notice             TEXT    NOT NULL,
    recipient_id       INTEGER NOT NULL,
    channel            TEXT    NOT NULL,
    state              TEXT    NOT NULL DEFAULT 'pending'
                       CHECK (state = 'pending' OR state = 'claimed' OR state = 'sent'
                            OR state = 'failed' OR state = 'expired' OR state = 'superseded'),
    attempts           INTEGER NOT NULL DEFAULT 0,
    due_at             INTEGER NOT NULL,
    deadline           INTEGER NOT NULL,
    last_error         TEXT,
    sent_at            INTEGER,
    backend            TEXT,
    provider_id        TEXT,
    body_id            INTEGER,
    lease_owner        TEXT,
    lease_until        INTEGER,
    lease_token        BIGINT,
    possibly_duplicate BOOLEAN NOT NULL DEFAULT FALSE,
    endpoint_id        BIGINT REFERENCES webhook_endpoints (id),
    handset            TEXT,
    handset_at         BIGINT,
    sent_latency_ms    BIGINT,
    CHECK (window_id IS NOT NULL OR broadcast_id IS NOT NULL)
);
INSERT INTO deliveries (id, window_id, broadcast_id, revision, notice, recipient_id, channel, state, attempts,
    due_at, deadline, last_error, sent_at, backend, provider_id, body_id, lease_owner, lease_until, lease_token,
    possibly_duplicate, endpoint_id, handset, handset_at, sent_latency_ms)
SELECT id, window_id, broadcast_id, revision, notice, recipient_id, channel, state, attempts,
    due_at, deadline, last_error, sent_at, backend, provider_id, body_id, lease_owner, lease_until, lease_token,
    possibly_duplicate, endpoint_id, handset, handset_at, sent_latency_ms
FROM deliveries_before_0014 ORDER BY id;
DROP TABLE deliveries_before_0014;
CREATE UNIQUE INDEX deliveries_key ON deliveries (window_id, revision, notice, recipient_id, channel, COALESCE(endpoint_id, 0))
    WHERE broadcast_id IS NULL;
CREATE UNIQUE INDEX deliveries_broadcast_key ON deliveries (broadcast_id, recipient_id, channel, COALESCE(endpoint_id, 0))
    WHERE broadcast_id IS NOT NULL;
CREATE INDEX deliveries_due ON deliveries (due_at, id) WHERE state = 'pending';
CREATE INDEX deliveries_expiry ON deliveries (deadline) WHERE state = 'pending';
CREATE INDEX deliveries_told ON deliveries (window_id, recipient_id) WHERE state = 'sent';
CREATE INDEX deliveries_lease_token ON deliveries (lease_token) WHERE state = 'claimed';
CREATE INDEX deliveries_broadcast_window ON deliveries (window_id, recipient_id) WHERE broadcast_id IS NOT NULL;
CREATE INDEX deliveries_by_provider_id ON deliveries (provider_id) WHERE provider_id IS NOT NULL;
CREATE INDEX deliveries_by_endpoint ON deliveries (endpoint_id) WHERE endpoint_id IS NOT NULL;
