-- Take the advisory locks of several operators in the given order, in one
-- round trip. Callers pass ids sorted, so concurrent batches cannot deadlock.
-- depends: 0002.analyst-views

CREATE FUNCTION pushline_lock_operators(ids bigint[]) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    id bigint;
BEGIN
    FOREACH id IN ARRAY ids LOOP
        PERFORM pg_advisory_xact_lock(id);
    END LOOP;
END
$$;
