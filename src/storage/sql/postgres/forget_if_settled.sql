-- Forgets claim $1 once none of its rows is still claimed. Its rows are counted through the
-- token index, which keeps the rows it sent: a count reads them all, about a millisecond for a
-- batch of 2,000. Written as `NOT EXISTS`, the plan could instead scan the whole ledger
-- expecting to stop at an early match: under statistics taken while a fan-out's first pages
-- were claimed under a few tokens, a token looked to hold hundreds of claimed rows, while a
-- settled claim has none, and each batch's outcome took 10–30 ms on a ledger of 100,000 rows,
-- more as the ledger grows (BENCHMARKS.md, *4 December, late*).
DELETE FROM claims
WHERE lease_token = $1
  AND (SELECT COUNT(*) FROM deliveries WHERE lease_token = $1 AND state = 'claimed' AND leased) = 0
