-- Which import last wrote a recipient, and from which line: a second row for the same recipient
-- in one file is reported against the first, whatever the file's size, without holding the
-- whole file's keys in memory.
ALTER TABLE recipients ADD COLUMN import_id BIGINT;
ALTER TABLE recipients ADD COLUMN import_line BIGINT;
-- A fingerprint of what an import sets (all but the opt-out): an unchanged row is told from a
-- changed one without reading it back whole.
ALTER TABLE recipients ADD COLUMN content_hash BIGINT;
