-- The ledger's references to windows, recipients, broadcasts and bodies are no longer checked
-- by foreign keys. Each check is a trigger run for every row written: planning a fan-out spent
-- about 40 % of each page's insert in them, and recording a row sent checked its body again.
-- Nothing is lost: none of these four tables ever has a row deleted, and every id the ledger
-- is given was read from its table (a fan-out's page is enqueued under its window's lock).
-- The reference to a webhook endpoint keeps its check: endpoints are deleted (when unused).
-- SQLite keeps all of them: its checks are index lookups on rows already in memory, about 5 %
-- of planning there, not worth rebuilding its largest table.
ALTER TABLE deliveries DROP CONSTRAINT deliveries_window_id_fkey;
ALTER TABLE deliveries DROP CONSTRAINT deliveries_recipient_id_fkey;
ALTER TABLE deliveries DROP CONSTRAINT deliveries_broadcast_id_fkey;
ALTER TABLE deliveries DROP CONSTRAINT deliveries_body_id_fkey;
