-- Told once, whichever path told them: a window's own rows are not enqueued for a recipient a
-- broadcast of the same notice reaches, and the other way round. This index serves the first
-- check (the window key index serves the second).
CREATE INDEX deliveries_broadcast_window ON deliveries (window_id, recipient_id) WHERE broadcast_id IS NOT NULL;
