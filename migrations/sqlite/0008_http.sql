-- Billers' API tokens. Only a SHA-256 of each token is kept; the token carries its row id, so
-- a request finds its row by id and compares the hash in constant time. A rotated token is
-- revoked, not deleted.
CREATE TABLE api_tokens (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    recipient_id BIGINT NOT NULL REFERENCES recipients (id),
    hash         TEXT   NOT NULL,
    created_at   BIGINT NOT NULL,
    revoked_at   BIGINT
);
CREATE INDEX api_tokens_by_recipient ON api_tokens (recipient_id, id);

-- What reached a recipient from outside: an opt-out by SMS reply or by an email's unsubscribe
-- link, an opt-in by an operator. The recipients row holds the state; this holds the story.
CREATE TABLE recipient_history (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    recipient_id BIGINT NOT NULL REFERENCES recipients (id),
    at           BIGINT NOT NULL,
    source       TEXT   NOT NULL,
    action       TEXT   NOT NULL,
    details      TEXT   NOT NULL
);
CREATE INDEX recipient_history_by_recipient ON recipient_history (recipient_id, id);

-- The handset's receipt, as the SMS provider reported it afterwards (delivered or
-- undelivered), beside the delivery's own state (sent: handed to the provider).
ALTER TABLE deliveries ADD COLUMN handset TEXT;
ALTER TABLE deliveries ADD COLUMN handset_at BIGINT;
-- Reports name the provider's message id.
CREATE INDEX attempts_by_provider_id ON attempts (provider_id) WHERE provider_id IS NOT NULL;

-- Keys this deployment made for itself: the key that signs unsubscribe links and derives the
-- secret path of provider callbacks. Made once, on first use.
CREATE TABLE server_keys (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- The answer to a POST made with an Idempotency-Key, per caller, kept at least a day: the same
-- key again gets the same answer (or 422 if the request differs) and changes nothing.
CREATE TABLE idempotency_keys (
    caller       TEXT   NOT NULL,
    key          TEXT   NOT NULL,
    request_hash TEXT   NOT NULL,
    status       BIGINT NOT NULL,
    body         TEXT   NOT NULL,
    created_at   BIGINT NOT NULL,
    PRIMARY KEY (caller, key)
);
-- Answers older than a day are deleted as new ones are kept.
CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at);

-- The events each biller was sent by webhook (or, with no endpoint, would have been), as
-- rendered, in order: `GET /v1/events` pages through them and a subscription's replay sends
-- them again. One row per event and biller, whatever its endpoints.
CREATE TABLE biller_events (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    recipient_id BIGINT NOT NULL REFERENCES recipients (id),
    event_key    TEXT   NOT NULL,
    type         TEXT   NOT NULL,
    payload      TEXT   NOT NULL,
    created_at   BIGINT NOT NULL
);
CREATE UNIQUE INDEX biller_events_key ON biller_events (recipient_id, event_key);
CREATE INDEX biller_events_by_recipient ON biller_events (recipient_id, id);
