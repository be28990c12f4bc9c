-- A delivery's successful hand-over is kept on its own row, beside the backend, `sent_at` and
-- the provider's id already there: how long the backend's call took. The attempts log keeps
-- the tries that did not end it sent (failures, and a success a lapsed claim could no longer
-- record), one row fewer per delivery on the common path. A delivery's attempts are the log's
-- rows for it, then its row's success where `sent_latency_ms` is set; rows sent before this
-- migration have their success in the log and no latency here.
ALTER TABLE deliveries ADD COLUMN sent_latency_ms BIGINT;
-- Provider reports name the message id: found on the delivery first, then in the log.
CREATE INDEX deliveries_by_provider_id ON deliveries (provider_id) WHERE provider_id IS NOT NULL;
-- A webhook endpoint's recent attempts.
CREATE INDEX deliveries_by_endpoint ON deliveries (endpoint_id) WHERE endpoint_id IS NOT NULL;
