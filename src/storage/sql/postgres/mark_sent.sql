-- Marks sent the rows of one batch still claimed under its token $2, sent through backend $1;
-- $3 to $7 are the rows' ids, when each was handed over (Unix ms), provider ids, latencies and
-- bodies. The sent row's lease is cleared and its token kept; a provider id from an
-- earlier attempt stays unless this one has its own.
-- Each row is looked up by its id, and only by its id: `+ 0` and `|| ''` keep PostgreSQL from
-- reaching the rows through the token index, which its statistics take for nearly empty
-- while it holds an entry for every row claimed or sent (migration `sent_in_place`). With the
-- token as an index condition, the token's one estimated row drove a loop over every id for each row
-- of the batch (290 ms for 1,000 rows of a batch of 2,000 once a 10-million-row queue had been
-- analysed, against 13 ms); with `state = 'claimed'` as written, the plan hashed a scan of
-- that whole index for every statement (the slowest statement of a 10-million-row run, its
-- cost growing with the rows already claimed).
UPDATE deliveries
SET state = 'sent', sent_at = v.at, sent_latency_ms = v.latency,
    provider_id = COALESCE(v.pid, deliveries.provider_id), backend = $1, body_id = v.body,
    last_error = NULL, lease_until = NULL
FROM unnest($3::bigint[], $4::bigint[], $5::text[], $6::bigint[], $7::bigint[]) AS v (id, at, pid, latency, body)
WHERE deliveries.id = v.id AND deliveries.state || '' = 'claimed' AND deliveries.lease_token + 0 = $2
