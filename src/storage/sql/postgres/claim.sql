-- Claims up to $4 deliveries due at $3 (Unix ms, the injected clock) and before their deadline,
-- oldest due first, for owner $1 under token $6, leased for $2 ms of real time on the database's
-- clock (so daemons with skewed clocks agree); $5 is an optional broadcast. Several workers share
-- the table: rows another worker is claiming are skipped, never waited for. The claimed rows are
-- read back by their token once this has committed. Rows of a paused window are left where they are
-- (those held, out of the index, are not even looked at).
-- Only rows past the position ($7, $8) in claim order are looked at, so the scan of the due index
-- starts there rather than at its front. A claim that took rows is recorded in `claims`, with
-- its lease, where lapsed leases are looked for (migration `sent_in_place`). Returns how many
-- rows it took.
WITH taken AS (
    UPDATE deliveries
    SET state = 'claimed', lease_owner = $1, lease_token = $6,
        lease_until = (floor(extract(epoch from clock_timestamp()) * 1000))::bigint + $2, attempts = attempts + 1
    WHERE id IN (
        SELECT id FROM deliveries
        WHERE waiting AND NOT held AND (due_at, id) > ($7, $8) AND due_at <= $3 AND deadline > $3 AND ($5::bigint IS NULL OR broadcast_id = $5)
          AND (window_id IS NULL OR window_id NOT IN (SELECT window_id FROM paused_windows))
        ORDER BY due_at, id
        LIMIT $4
        FOR UPDATE SKIP LOCKED
    )
    RETURNING 1
), recorded AS (
    INSERT INTO claims (lease_token, lease_owner, lease_until)
    SELECT $6, $1, (floor(extract(epoch from clock_timestamp()) * 1000))::bigint + $2
    WHERE EXISTS (SELECT 1 FROM taken)
)
SELECT COUNT(*) FROM taken
