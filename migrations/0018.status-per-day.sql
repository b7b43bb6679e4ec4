-- Conversations per day for the status page, read through the started_at indexes.
-- Aggregating the daily views (conversation_daily, conversation_v2_daily) read
-- every conversation ever stored, twice: past a million rows the page's 2 s
-- statement timeout fired and the page lost all its database figures. This
-- takes the latest 30 days with data (as the page showed them), found with an
-- index lookup, and ignores conversations dated beyond tomorrow so that one
-- absurd createdAt cannot hide every real day.
-- depends: 0016.web-reads-no-payload

CREATE FUNCTION pushline_conversations_per_day()
RETURNS TABLE (day date, format text, kind text, conversations bigint)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    WITH tz AS (SELECT timezone FROM public.pushline_config),
    push_api AS (SELECT max(started_at) AS last FROM public.conversations
                 WHERE started_at <= now() + interval '1 day'),
    webhooks AS (SELECT max(started_at) AS last FROM public.conversations_v2
                 WHERE started_at <= now() + interval '1 day')
    SELECT (c.started_at AT TIME ZONE tz.timezone)::date, 'push-api', c.type, count(*)
    FROM public.conversations c, push_api, tz
    WHERE c.started_at > push_api.last - interval '31 days' AND c.started_at <= push_api.last
    GROUP BY 1, 2, 3
    UNION ALL
    SELECT (v.started_at AT TIME ZONE tz.timezone)::date, 'webhook', v.channel, count(*)
    FROM public.conversations_v2 v, webhooks, tz
    WHERE v.started_at > webhooks.last - interval '31 days' AND v.started_at <= webhooks.last
    GROUP BY 1, 2, 3
    ORDER BY 1, 2, 3
$$;

REVOKE ALL ON FUNCTION pushline_conversations_per_day() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pushline_conversations_per_day() TO pushline_web, pushline_worker;
