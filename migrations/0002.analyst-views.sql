-- Daily views for analysts; days are in PUSH_TIMEZONE (pushline_config).
-- depends: 0001.initial

CREATE VIEW operator_daily AS
WITH tz AS (SELECT timezone FROM pushline_config),
session_days AS (
    -- A session across midnight counts on each day for its part in it.
    SELECT s.operator_id,
           d.day::date AS day,
           extract(epoch FROM
               least(s.logout_at, (d.day + interval '1 day') AT TIME ZONE tz.timezone)
             - greatest(s.login_at, d.day AT TIME ZONE tz.timezone))::double precision AS seconds
    FROM operator_sessions s, tz,
         generate_series(date_trunc('day', s.login_at AT TIME ZONE tz.timezone),
                         date_trunc('day', s.logout_at AT TIME ZONE tz.timezone),
                         interval '1 day') AS d(day)
    WHERE s.login_at IS NOT NULL AND s.logout_at IS NOT NULL
),
facts AS (
    SELECT operator_id, day, 0 AS sessions, seconds, 0 AS conversations FROM session_days
    UNION ALL
    SELECT s.operator_id, (s.login_at AT TIME ZONE tz.timezone)::date, 1, 0, 0
    FROM operator_sessions s, tz WHERE s.login_at IS NOT NULL
    UNION ALL
    SELECT c.operator_id, (c.started_at AT TIME ZONE tz.timezone)::date, 0, 0, 1
    FROM conversations c, tz WHERE c.started_at IS NOT NULL
)
SELECT operator_id, day,
       sum(sessions)::bigint AS sessions,
       sum(seconds)::double precision AS online_seconds,
       sum(conversations)::bigint AS conversations
FROM facts
GROUP BY operator_id, day;

CREATE VIEW conversation_daily AS
SELECT (c.started_at AT TIME ZONE tz.timezone)::date AS day,
       c.website_id, c.group_id, c.type,
       count(*) AS conversations,
       count(c.ended_at) AS ended,
       avg(c.duration_seconds) FILTER (WHERE c.ended_at IS NOT NULL) AS avg_duration_seconds
FROM conversations c, (SELECT timezone FROM pushline_config) tz
WHERE c.started_at IS NOT NULL
GROUP BY 1, 2, 3, 4;

-- Analysts read the tables and views, and nothing else.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'analyst') THEN
        CREATE ROLE analyst NOLOGIN;
    END IF;
END
$$;
GRANT SELECT ON events, conversations, operator_sessions, operator_daily, conversation_daily TO analyst;
