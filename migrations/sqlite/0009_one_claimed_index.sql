-- Claimed rows are found by their lease token (the claim's read-back, renewals, outcomes); the
-- few claimed at any time are scanned through that index for lapsed leases too. A second index
-- on claimed rows cost every delivery two more index writes (in at the claim, out at the end).
DROP INDEX deliveries_claimed;
