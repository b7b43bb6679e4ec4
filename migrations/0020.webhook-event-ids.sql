-- A webhook is its eventId (CONTRACT 7), whatever its createdAt says; but events
-- is unique by (event_key, created_at) only (every unique index of a partitioned
-- table holds its partition key), so telling a new eventId from a stored one
-- took a lookup by event_key in every partition, the largest statement of a
-- batch with webhooks. Instead, the batch that stores an eventId first claims
-- it here, with the instant of its row in events; a later batch meets the
-- claim (or waits for its commit) in one unique index (workers/store.py).
--
-- Rows outlive the events they name (retention does not prune them): a claim
-- whose row is gone from events is taken over by the next receipt.
-- depends: 0019.no-jit

CREATE TABLE webhook_event_ids (
    event_key uuid PRIMARY KEY,   -- events.event_key of a webhook with a string eventId
    created_at timestamptz        -- its row's events.created_at (NULL: undated)
);

-- The webhooks stored before this migration, each at its first row's instant.
INSERT INTO webhook_event_ids (event_key, created_at)
SELECT DISTINCT ON (event_key) event_key, created_at
FROM events
WHERE jsonb_typeof(payload->'eventType') = 'string'
  AND jsonb_typeof(payload->'name') IS DISTINCT FROM 'string'
  AND jsonb_typeof(payload->'eventId') = 'string'
ORDER BY event_key, id;

GRANT SELECT, INSERT, UPDATE, DELETE ON webhook_event_ids TO pushline_worker;
