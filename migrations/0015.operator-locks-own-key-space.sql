-- Operators' advisory locks in Pushline's own key space. 0003 took the one-key
-- form pg_advisory_xact_lock(operator_id), a key space every application of
-- the database shares: another's lock 42 blocked operator 42. Now the two-key
-- form (745100, key), 745100 being PUSHLINE_LOCKS (pushline/db.py). The second
-- key is int4, so ids are hashed; two operators sharing a hash only share a
-- lock. Keys are taken in their own sorted order, so two batches never hold
-- them crosswise whatever their ids hash to. The search_path is pinned.
-- depends: 0014.web-reads-webhook-status

CREATE OR REPLACE FUNCTION pushline_lock_operators(ids bigint[]) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    key integer;
BEGIN
    FOR key IN SELECT DISTINCT hashint8(id) FROM unnest(ids) AS id ORDER BY 1 LOOP
        PERFORM pg_advisory_xact_lock(745100, key);
    END LOOP;
END
$$;
