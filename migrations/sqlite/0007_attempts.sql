-- Every attempt to hand a delivery to a backend: when, which backend, how it went (sent,
-- transient, uncertain, permanent, gone, too_late), the provider's status and message id,
-- how long the call took, and the error (truncated, the recipient's address masked).
CREATE TABLE attempts (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id BIGINT NOT NULL REFERENCES deliveries (id),
    at          BIGINT NOT NULL,
    backend     TEXT   NOT NULL,
    outcome     TEXT   NOT NULL,
    status      TEXT,
    latency_ms  BIGINT NOT NULL,
    provider_id TEXT,
    error       TEXT
);
CREATE INDEX attempts_by_delivery ON attempts (delivery_id, id);
