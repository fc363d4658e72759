-- What the test handler applied (one row per message version). Numbered after the platform's
-- own migrations, which share the bookkeeping table.
CREATE TABLE IF NOT EXISTS applied (version BIGINT PRIMARY KEY);
