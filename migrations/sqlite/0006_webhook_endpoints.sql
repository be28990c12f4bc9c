-- Billers' webhook endpoints: where their outage events go, signed with their secret (and,
-- during a rotation, the previous one until previous_until), filtered by event type and
-- component (empty: all). An endpoint with a disabled_reason receives nothing.
CREATE TABLE webhook_endpoints (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    recipient_id    BIGINT NOT NULL REFERENCES recipients (id),
    url             TEXT   NOT NULL,
    secret          TEXT   NOT NULL,
    previous_secret TEXT,
    previous_until  BIGINT,
    events          TEXT   NOT NULL DEFAULT '',
    components      TEXT   NOT NULL DEFAULT '',
    disabled_reason TEXT,
    failing_since   BIGINT,
    created_at      BIGINT NOT NULL
);
CREATE INDEX webhook_endpoints_by_recipient ON webhook_endpoints (recipient_id, id);

-- A webhook delivery goes to one endpoint: two endpoints of a biller are two deliveries,
-- retried apart. Rows of other channels (and billers without endpoints) have none.
ALTER TABLE deliveries ADD COLUMN endpoint_id BIGINT REFERENCES webhook_endpoints (id);
DROP INDEX deliveries_key;
CREATE UNIQUE INDEX deliveries_key ON deliveries (window_id, revision, notice, recipient_id, channel, COALESCE(endpoint_id, 0))
    WHERE broadcast_id IS NULL;
DROP INDEX deliveries_broadcast_key;
CREATE UNIQUE INDEX deliveries_broadcast_key ON deliveries (broadcast_id, recipient_id, channel, COALESCE(endpoint_id, 0))
    WHERE broadcast_id IS NOT NULL;
