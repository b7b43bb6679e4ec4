-- events partitioned by month of created_at, so that retention drops whole
-- partitions. Events whose datetime is unusable (created_at NULL) live in the
-- default partition. A partitioned table's unique keys must contain the
-- partition key: the same event always has the same created_at (it is the
-- same `datetime.created` text), so (event_key, created_at) still identifies it.
-- depends: 0007.web-reads-status

ALTER TABLE operator_events DROP CONSTRAINT IF EXISTS operator_events_event_id_fkey;
ALTER TABLE events RENAME TO events_unpartitioned;
ALTER INDEX events_created_at RENAME TO events_unpartitioned_created_at;
ALTER INDEX events_not_processed RENAME TO events_unpartitioned_not_processed;

CREATE TABLE events (
    id bigint GENERATED ALWAYS AS IDENTITY,
    event_key uuid NOT NULL,               -- first 128 bits of sha256(canonical name, created, parameters)
    source text NOT NULL,
    name text NOT NULL,
    created_at timestamptz,                -- null only when the event's datetime is unusable
    sent_at timestamptz,
    received_at timestamptz NOT NULL,      -- first receipt
    deliveries integer NOT NULL DEFAULT 1 CHECK (deliveries >= 1),
    receipt_ids text[] NOT NULL,           -- the id each accepted push of this event got in its 202
    payload jsonb NOT NULL,                -- as first received
    status text NOT NULL CHECK (status IN ('processed', 'rejected', 'unhandled')),
    error text,
    processed_at timestamptz NOT NULL DEFAULT now(),
    CHECK ((status = 'processed') = (error IS NULL)),
    CHECK (deliveries = cardinality(receipt_ids)),
    UNIQUE NULLS NOT DISTINCT (event_key, created_at)
) PARTITION BY RANGE (created_at);
CREATE TABLE events_undated PARTITION OF events DEFAULT;
CREATE INDEX events_id ON events (id);
CREATE INDEX events_created_at ON events (created_at);
CREATE INDEX events_not_processed ON events (status, name) WHERE status <> 'processed';
CREATE INDEX events_received_at ON events (received_at);  -- the status page's recent figures

-- Makes the month's partition if it is missing; owned by the schema owner so
-- that workers need no CREATE privilege. Callers serialize on an advisory lock.
CREATE FUNCTION pushline_ensure_month(month date) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public AS $$
DECLARE
    first date := date_trunc('month', month)::date;
    name text := format('events_%s', to_char(first, 'YYYY_MM'));
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('pushline_ensure_month'));
    IF to_regclass(name) IS NULL THEN
        EXECUTE format('CREATE TABLE %I PARTITION OF events FOR VALUES FROM (%L) TO (%L)',
                       name, first, (first + interval '1 month')::date);
    END IF;
END
$$;
REVOKE ALL ON FUNCTION pushline_ensure_month(date) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pushline_ensure_month(date) TO pushline_worker;

-- Move what exists (a fresh install has nothing), month by month.
DO $$
DECLARE
    m date;
BEGIN
    FOR m IN SELECT DISTINCT date_trunc('month', created_at)::date FROM events_unpartitioned
             WHERE created_at IS NOT NULL LOOP
        PERFORM pushline_ensure_month(m);
    END LOOP;
END
$$;
INSERT INTO events OVERRIDING SYSTEM VALUE
SELECT id, event_key, source, name, created_at, sent_at, received_at, deliveries, receipt_ids, payload, status,
       error, processed_at
FROM events_unpartitioned;
DO $$ BEGIN  -- in a block, so that migrating prints no result table (same effect as before)
    PERFORM setval(pg_get_serial_sequence('events', 'id'), coalesce((SELECT max(id) FROM events), 0) + 1, false);
END $$;
DROP TABLE events_unpartitioned;

GRANT SELECT ON events TO analyst;
GRANT SELECT ON events TO pushline_web;
GRANT SELECT, INSERT, UPDATE, DELETE ON events TO pushline_worker;
