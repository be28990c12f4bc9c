-- A paused window's pending rows are held out of the claim's index. Claims leave a paused
-- window's rows be (they check `paused_windows`), but they found that out row by row while
-- walking the due index: with a million rows of a paused window at the front of the queue,
-- every claim walked all of them to find the rows behind. `held` takes those rows out of the
-- index instead. It is set on a window's pending rows when it is paused, and on rows written
-- pending while it is paused; resuming clears it. The check on `paused_windows` stays what
-- keeps a paused window's rows unsent: a row that goes back to pending while its window is
-- paused (a retry, a lapsed claim) is left unheld, and is passed over as before.
ALTER TABLE deliveries ADD COLUMN held BOOLEAN NOT NULL DEFAULT FALSE;
DROP INDEX deliveries_due;
CREATE INDEX deliveries_due ON deliveries (due_at, id) WHERE state = 'pending' AND NOT held;
-- Resuming finds the window's held rows here: normally none.
CREATE INDEX deliveries_held ON deliveries (window_id) WHERE held;
UPDATE deliveries SET held = TRUE
WHERE state = 'pending' AND window_id IN (SELECT window_id FROM paused_windows);
