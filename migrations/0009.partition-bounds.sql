-- Every dated event has a partition before it arrives, and workers never run DDL.
--
-- 0008 created a month's partition inside the batch that first named it: the
-- month was taken in the payload's offset and the bounds in the session's time
-- zone (a -03:00 event of 31 July 21:30 landed in the default partition, and
-- August's partition could then never be made), any year from 1 to 9999 made a
-- table, and the DDL held ACCESS EXCLUSIVE on `events` for the whole batch.
--
-- The layout now covers the whole time line, bounds in UTC:
--   events_before   MINVALUE .. B          everything older (one table)
--   events_YYYY_MM  B .. H, one per month  contiguous
--   events_after    H .. MAXVALUE          the far future (absurd dates, one table)
--   events_undated  DEFAULT                only rows whose created_at is NULL
-- pushline_roll_partitions() moves H forward ahead of time (housekeeping,
-- outside any batch, under lock_timeout): it detaches events_after, creates
-- the months up to the new H, and moves the few rows events_after held.
-- All partition DDL takes the advisory lock (745100, 1), Pushline's key space.
--
-- Existing rows are copied into the new table once (a one-time rewrite).
-- depends: 0008.partition-events

ALTER TABLE events RENAME TO events_0008;
ALTER INDEX events_id RENAME TO events_0008_id;
ALTER INDEX events_created_at RENAME TO events_0008_created_at;
ALTER INDEX events_not_processed RENAME TO events_0008_not_processed;
ALTER INDEX events_received_at RENAME TO events_0008_received_at;
ALTER TABLE events_0008 RENAME CONSTRAINT events_event_key_created_at_key TO events_0008_key;
ALTER TABLE events_undated RENAME TO events_0008_undated;

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
CREATE INDEX events_id ON events (id);
CREATE INDEX events_created_at ON events (created_at);
CREATE INDEX events_not_processed ON events (status, name) WHERE status <> 'processed';
CREATE INDEX events_received_at ON events (received_at);

-- A month's first instant in UTC, as a bound literal no session setting can change.
CREATE FUNCTION pushline_utc_bound(t timestamptz) RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || '+00'
$$;

-- The first instant of the month (UTC) that is `months` after the one holding t.
CREATE FUNCTION pushline_month_start(t timestamptz, months integer DEFAULT 0) RETURNS timestamptz
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT (date_trunc('month', t AT TIME ZONE 'UTC') + make_interval(months => months)) AT TIME ZONE 'UTC'
$$;

DO $$
DECLARE
    recent timestamptz;
    b timestamptz;
    h timestamptz := pushline_month_start(now(), 3);
    m timestamptz;
BEGIN
    -- Monthly tables from a year back (or the oldest event of the last five
    -- years, when an install already holds older ones) to three months ahead.
    SELECT min(created_at) INTO recent FROM events_0008 WHERE created_at >= now() - interval '5 years';
    b := least(pushline_month_start(now(), -12), pushline_month_start(coalesce(recent, now())));
    EXECUTE format('CREATE TABLE events_before PARTITION OF events FOR VALUES FROM (MINVALUE) TO (%L)',
                   pushline_utc_bound(b));
    m := b;
    WHILE m < h LOOP
        EXECUTE format('CREATE TABLE %I PARTITION OF events FOR VALUES FROM (%L) TO (%L)',
                       'events_' || to_char(m AT TIME ZONE 'UTC', 'YYYY_MM'),
                       pushline_utc_bound(m), pushline_utc_bound(pushline_month_start(m, 1)));
        m := pushline_month_start(m, 1);
    END LOOP;
    EXECUTE format('CREATE TABLE events_after PARTITION OF events FOR VALUES FROM (%L) TO (MAXVALUE)',
                   pushline_utc_bound(h));
END
$$;
CREATE TABLE events_undated PARTITION OF events DEFAULT;
-- The default partition takes only what has no date: a dated row there would
-- make the range partition covering it impossible to create.
ALTER TABLE events_undated ADD CONSTRAINT events_undated_has_no_date CHECK (created_at IS NULL);

INSERT INTO events OVERRIDING SYSTEM VALUE
SELECT id, event_key, source, name, created_at, sent_at, received_at, deliveries, receipt_ids, payload, status,
       error, processed_at
FROM events_0008;
DO $$ BEGIN  -- in a block, so that the migration prints no result table
    PERFORM setval(pg_get_serial_sequence('events', 'id'), coalesce((SELECT max(id) FROM events), 0) + 1, false);
END $$;
DROP TABLE events_0008;
DROP FUNCTION IF EXISTS pushline_ensure_month(date);

-- Housekeeping: keep monthly partitions `months_ahead` months ahead of now.
-- Returns how many months it created (0 when already far enough). The caller
-- sets lock_timeout: DETACH waits for ACCESS EXCLUSIVE on events_after behind
-- any running query, and must give up rather than queue writers behind it.
-- Only the rows below the new edge move; events_after itself is attached
-- again with its new lower bound, so far-future rows are never rewritten.
-- SECURITY DEFINER (workers may not run DDL): every name is schema-qualified
-- and the search path holds only pg_catalog, then pg_temp, so no object that
-- another role creates can stand in for one of ours.
CREATE FUNCTION pushline_roll_partitions(months_ahead integer DEFAULT 3) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    horizon timestamptz;
    target timestamptz := public.pushline_month_start(now(), least(greatest(months_ahead, 1), 24));
    m timestamptz;
    made integer := 0;
BEGIN
    PERFORM pg_advisory_xact_lock(745100, 1);
    SELECT (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'FROM \(''([^'']+)''\)'))[1]::timestamptz
      INTO horizon FROM pg_class c WHERE c.oid = 'public.events_after'::regclass;
    IF horizon >= target THEN
        RETURN 0;
    END IF;
    ALTER TABLE public.events DETACH PARTITION public.events_after;
    m := horizon;
    WHILE m < target LOOP
        EXECUTE format('CREATE TABLE public.%I PARTITION OF public.events FOR VALUES FROM (%L) TO (%L)',
                       'events_' || to_char(m AT TIME ZONE 'UTC', 'YYYY_MM'),
                       public.pushline_utc_bound(m), public.pushline_utc_bound(public.pushline_month_start(m, 1)));
        m := public.pushline_month_start(m, 1);
        made := made + 1;
    END LOOP;
    WITH moved AS (DELETE FROM public.events_after WHERE created_at < target RETURNING *)
    INSERT INTO public.events OVERRIDING SYSTEM VALUE SELECT * FROM moved;
    EXECUTE format('ALTER TABLE public.events ATTACH PARTITION public.events_after FOR VALUES FROM (%L) TO (MAXVALUE)',
                   public.pushline_utc_bound(target));
    RETURN made;
END
$$;
REVOKE ALL ON FUNCTION pushline_roll_partitions(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pushline_roll_partitions(integer) TO pushline_worker;

GRANT SELECT ON events TO analyst;
GRANT SELECT ON events TO pushline_web;
GRANT SELECT, INSERT, UPDATE, DELETE ON events TO pushline_worker;
