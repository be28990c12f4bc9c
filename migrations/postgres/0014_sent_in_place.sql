-- Recording a row sent rewrites it in place (a heap-only update): no index gains an entry for
-- it. PostgreSQL can do that only while no index names a column the update changes, in its
-- key or in its condition; every partial index here named `state`, so each row recorded sent
-- was a new entry in every index of the ledger, the idempotency key's most of all.
--
-- So the indexes' conditions name two columns computed from `state` instead, which a row
-- recorded sent leaves as they were:
--   `waiting`: pending (the due and expiry indexes);
--   `leased`: claimed or sent (the lease token and told indexes). A claimed row keeps its
--   token when it is sent, so its token index entry stays; lookups by token test `state`.
-- A row's lease and its end, which the sent row clears, are in no index at all. The claims
-- whose lease has lapsed, or whose daemon is gone, are found in `claims` instead: a row per
-- token, written with the claimed rows, its lease renewed with theirs. A claim's row goes once
-- its lease has lapsed with none of its rows still claimed.
--
-- A heap-only update needs room on the row's own page for the new version: pages are filled
-- to 45 %, which leaves room for every row on them to be recorded sent (BENCHMARKS.md). The
-- ledger takes about twice the disk space it did.
ALTER TABLE deliveries ADD COLUMN waiting BOOLEAN GENERATED ALWAYS AS (state = 'pending') STORED;
ALTER TABLE deliveries ADD COLUMN leased BOOLEAN GENERATED ALWAYS AS (state IN ('claimed', 'sent')) STORED;
ALTER TABLE deliveries SET (fillfactor = 45);

DROP INDEX deliveries_due;
CREATE INDEX deliveries_due ON deliveries (due_at, id) WHERE waiting AND NOT held;
DROP INDEX deliveries_expiry;
CREATE INDEX deliveries_expiry ON deliveries (deadline) WHERE waiting;
DROP INDEX deliveries_lease_token;
CREATE INDEX deliveries_lease_token ON deliveries (lease_token) WHERE leased;
DROP INDEX deliveries_told;
-- `window_id IS NOT NULL` is there to keep lookups by token away from this index: under
-- statistics taken while the rows were pending, an index on `leased` rows alone looked empty
-- to them, and a claim's read-back walked all of it (215 ms for 300,000 rows).
CREATE INDEX deliveries_told ON deliveries (window_id, recipient_id) WHERE leased AND window_id IS NOT NULL;

CREATE TABLE claims (
    lease_token BIGINT PRIMARY KEY,
    lease_owner TEXT   NOT NULL,
    lease_until BIGINT NOT NULL
);
CREATE INDEX claims_by_lease ON claims (lease_until);
INSERT INTO claims (lease_token, lease_owner, lease_until)
SELECT lease_token, MIN(lease_owner), MAX(lease_until) FROM deliveries
WHERE state = 'claimed' AND lease_token IS NOT NULL
GROUP BY lease_token;
