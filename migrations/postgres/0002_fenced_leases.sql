-- Fenced leases: every claim carries a token, and every write of a claimed row names it, so a
-- worker whose lease lapsed cannot overwrite the outcome of the one that took the row over.
ALTER TABLE deliveries ADD COLUMN lease_token BIGINT;
-- A row claimed by a worker that died (or whose lease lapsed) may have gone out already: when
-- it is sent again, or expires, the ledger says so.
ALTER TABLE deliveries ADD COLUMN possibly_duplicate BOOLEAN NOT NULL DEFAULT FALSE;
CREATE INDEX deliveries_lease_token ON deliveries (lease_token) WHERE state = 'claimed';

-- Fan-out progress: a planned notice is recorded before its rows, and each committed page of
-- recipients moves `fanned_out_to` on, so a restart continues where the last commit ended.
ALTER TABLE window_notices ADD COLUMN reach TEXT NOT NULL DEFAULT 'eligible';
ALTER TABLE window_notices ADD COLUMN fanned_out_to BIGINT NOT NULL DEFAULT 0;
ALTER TABLE window_notices ADD COLUMN fan_out_done BOOLEAN NOT NULL DEFAULT TRUE;
