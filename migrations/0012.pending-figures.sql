-- The age of the oldest spooled push, for the web tier's /metrics and /status,
-- without granting it read access to the spooled payloads themselves.
-- depends: 0009.partition-bounds

CREATE FUNCTION pushline_spool_oldest() RETURNS double precision
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT extract(epoch FROM min(spooled_at))::double precision FROM public.spool
$$;
CREATE INDEX spool_spooled_at ON spool (spooled_at);  -- min() without a scan, also when the spool is large
REVOKE ALL ON FUNCTION pushline_spool_oldest() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pushline_spool_oldest() TO pushline_web, pushline_worker;
