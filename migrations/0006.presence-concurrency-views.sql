-- Finer-grained views for analysts; hours and minutes are in PUSH_TIMEZONE.
-- depends: 0005.roles

-- The last instant of [a, b): an interval ending exactly on a boundary does not
-- reach into the next hour, day or minute (a zero-length one stays at a).
CREATE FUNCTION last_instant(a timestamptz, b timestamptz) RETURNS timestamptz
    LANGUAGE sql IMMUTABLE AS $$ SELECT greatest(a, b - interval '1 microsecond') $$;

-- operator_daily again, so that a session ending at midnight adds no empty next day.
CREATE OR REPLACE VIEW operator_daily AS
WITH tz AS (SELECT timezone FROM pushline_config),
session_days AS (
    SELECT s.operator_id,
           d.day::date AS day,
           extract(epoch FROM
               least(s.logout_at, (d.day + interval '1 day') AT TIME ZONE tz.timezone)
             - greatest(s.login_at, d.day AT TIME ZONE tz.timezone))::double precision AS seconds
    FROM operator_sessions s, tz,
         generate_series(date_trunc('day', s.login_at AT TIME ZONE tz.timezone),
                         date_trunc('day', last_instant(s.login_at, s.logout_at) AT TIME ZONE tz.timezone),
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

-- Seconds online per operator and local hour, from sessions with both ends
-- known; a session counts in each hour for its part in it.
CREATE VIEW operator_presence AS
WITH tz AS (SELECT timezone FROM pushline_config)
SELECT s.operator_id,
       h.hour AS hour,
       sum(extract(epoch FROM
           least(s.logout_at, (h.hour + interval '1 hour') AT TIME ZONE tz.timezone)
         - greatest(s.login_at, h.hour AT TIME ZONE tz.timezone)))::double precision AS online_seconds
FROM operator_sessions s, tz,
     generate_series(date_trunc('hour', s.login_at AT TIME ZONE tz.timezone),
                     date_trunc('hour', last_instant(s.login_at, s.logout_at) AT TIME ZONE tz.timezone),
                     interval '1 hour') AS h(hour)
WHERE s.login_at IS NOT NULL AND s.logout_at IS NOT NULL
GROUP BY s.operator_id, h.hour;

-- Conversations open per website and local minute: a conversation with both
-- ends known is open in every minute that overlaps [started_at, ended_at)
-- (a zero-length one in its single minute). Without an end it is not counted.
CREATE VIEW conversation_concurrency AS
WITH tz AS (SELECT timezone FROM pushline_config)
SELECT c.website_id,
       m.minute AS minute,
       count(*) AS conversations
FROM conversations c, tz,
     generate_series(date_trunc('minute', c.started_at AT TIME ZONE tz.timezone),
                     date_trunc('minute', last_instant(c.started_at, c.ended_at) AT TIME ZONE tz.timezone),
                     interval '1 minute') AS m(minute)
WHERE c.started_at IS NOT NULL AND c.ended_at IS NOT NULL AND c.ended_at >= c.started_at
GROUP BY c.website_id, m.minute;

GRANT SELECT ON operator_presence, conversation_concurrency TO analyst;
