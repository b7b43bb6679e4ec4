-- The internet-facing tier reads no payload. 0007 granted pushline_web SELECT on
-- events for the status page; it now calls these functions instead, which return
-- counts, names, times and rejection reasons (errors name fields, never values of
-- the body), and INSERT on spool stays its only write.
-- depends: 0015.operator-locks-own-key-space

CREATE FUNCTION pushline_status_figures(OUT ingest_per_second numeric, OUT rejected bigint)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT (SELECT count(*) FROM public.events WHERE received_at > now() - interval '1 minute') / 60.0,
           (SELECT count(*) FROM public.events WHERE status = 'rejected')
$$;

CREATE FUNCTION pushline_latest_rejections(n integer)
RETURNS TABLE (name text, error text, received_at timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT e.name, e.error, e.received_at FROM public.events e
    WHERE e.status = 'rejected' ORDER BY e.received_at DESC LIMIT least(n, 100)
$$;

-- Per minute of the last 30, by name and format (a webhook has a string eventType
-- and no string name).
CREATE FUNCTION pushline_events_per_minute()
RETURNS TABLE (minute text, name text, format text, events bigint)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT to_char(date_trunc('minute', e.received_at), 'HH24:MI'), e.name,
           CASE WHEN jsonb_typeof(e.payload->'eventType') = 'string'
                     AND jsonb_typeof(e.payload->'name') IS DISTINCT FROM 'string' THEN 'webhook'
                ELSE 'push-api' END,
           count(*)
    FROM public.events e WHERE e.received_at > now() - interval '30 minutes'
    GROUP BY 1, 2, 3 ORDER BY 1, 2
$$;

REVOKE ALL ON FUNCTION pushline_status_figures(), pushline_latest_rejections(integer),
    pushline_events_per_minute() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pushline_status_figures(), pushline_latest_rejections(integer),
    pushline_events_per_minute() TO pushline_web, pushline_worker;

REVOKE SELECT ON events FROM pushline_web;
