-- The cancellation reason in Swahili, beside the English one: a Swahili notice never carries
-- English text the operator could have translated.
ALTER TABLE windows ADD COLUMN cancel_reason_sw TEXT;
