-- The columns PostgreSQL's ledger indexes in place of `state` (its migration `sent_in_place`),
-- here so that statements both stores share can name them. SQLite indexes neither: its
-- indexes keep their conditions on `state`, and these are computed as they are read.
ALTER TABLE deliveries ADD COLUMN waiting INTEGER GENERATED ALWAYS AS (state = 'pending') VIRTUAL;
ALTER TABLE deliveries ADD COLUMN leased INTEGER GENERATED ALWAYS AS (state IN ('claimed', 'sent')) VIRTUAL;
