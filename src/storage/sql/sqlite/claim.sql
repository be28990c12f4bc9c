-- Claims up to $4 due deliveries for $1 until $2 (Unix ms), oldest due first; $3 is now and
-- $5 an optional broadcast. SQLite: one daemon per database file, so no row locking is needed.
UPDATE deliveries SET state = 'claimed', lease_owner = $1, lease_until = $2, attempts = attempts + 1
WHERE id IN (
    SELECT id FROM deliveries
    WHERE state = 'pending' AND due_at <= $3 AND deadline > $3 AND ($5 IS NULL OR broadcast_id = $5)
    ORDER BY due_at, id
    LIMIT $4
)
RETURNING id
