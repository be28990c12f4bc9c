-- Which import last wrote a recipient, and from which line: a second row for the same recipient
-- in one file is reported against the first, whatever the file's size, without holding the
-- whole file's keys in memory.
ALTER TABLE recipients ADD COLUMN import_id BIGINT;
ALTER TABLE recipients ADD COLUMN import_line BIGINT;
