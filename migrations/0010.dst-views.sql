-- The analyst views on daylight-saving days. operator_presence and
-- conversation_concurrency (0006) stepped through LOCAL timestamps and turned
-- bucket bounds back into instants with AT TIME ZONE: on the day the clocks go
-- back, the repeated local hour has one reading (the second), so a session in
-- its first occurrence got wrong or negative seconds and a conversation from
-- 02:50 CEST to 02:10 CET was not counted at all; on the day they go forward,
-- the missing hour still had buckets. They now step through ABSOLUTE instants,
-- clip with real instants, and label each bucket with its local hour/minute:
-- the repeated hour legitimately holds up to 7200 s. operator_daily's day
-- bounds were right unless local midnight itself happens twice
-- (America/Havana: 01:00 CDT -> 00:00 CST); it now starts a day at its first
-- instant. conversation_daily only labels instants with their local day: right.
-- CREATE OR REPLACE keeps the columns and the grants (analyst, pushline_web).
-- depends: 0008.partition-events

-- The instant at which the local `unit` ('hour', 'minute') containing `at`
-- began, on the wall clock in force at `at`. For an instant just after a change
-- of offset in the middle of a local hour (Pacific/Chatham changes at 02:45)
-- this is before the change; operator_presence handles that hour by minutes.
CREATE FUNCTION local_start(unit text, at timestamptz, tz text) RETURNS timestamptz
    LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT at - ((at AT TIME ZONE tz) - date_trunc(unit, at AT TIME ZONE tz))
$$;

-- The first instant of local day `day` (a midnight). `day AT TIME ZONE tz` is
-- right when midnight happens once, and when the clocks jump over it (it is
-- then read with the offset before the jump: the jump's instant). When the
-- clocks go back over midnight it is its second occurrence; the day began at
-- the first, read with the offset in force 3 hours earlier (no change of
-- offset exceeds 2 hours) and kept if that reading does show midnight.
CREATE FUNCTION local_day_start(day timestamp, tz text) RETURNS timestamptz
    LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT least(day AT TIME ZONE tz,
                 CASE WHEN ((day - ((day AT TIME ZONE tz - interval '3 hours') AT TIME ZONE tz
                                   - (day AT TIME ZONE tz - interval '3 hours') AT TIME ZONE 'UTC'))
                            AT TIME ZONE 'UTC') AT TIME ZONE tz = day
                      THEN (day - ((day AT TIME ZONE tz - interval '3 hours') AT TIME ZONE tz
                                  - (day AT TIME ZONE tz - interval '3 hours') AT TIME ZONE 'UTC'))
                           AT TIME ZONE 'UTC'
                 END)
$$;

-- Same columns as 0006; only the day bounds change.
CREATE OR REPLACE VIEW operator_daily AS
WITH tz AS (SELECT timezone FROM pushline_config),
session_days AS (
    SELECT s.operator_id,
           d.day::date AS day,
           extract(epoch FROM
               least(s.logout_at, local_day_start(d.day + interval '1 day', tz.timezone))
             - greatest(s.login_at, local_day_start(d.day, tz.timezone)))::double precision AS seconds
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

-- Seconds online per operator and local hour. The session is cut into absolute
-- hours from the start of the local hour of its login; each piece counts for
-- the local hour it lies in, so the hour repeated in autumn sums both of its
-- occurrences and the hour skipped in spring has no row. An absolute hour is
-- one local hour unless the wall clock does not run with it there: a change of
-- offset inside it (Pacific/Chatham at 02:45) or hours that no longer begin on
-- the local hour after a 30-minute change (Australia/Lord_Howe); such an hour
-- is cut into its 60 minutes instead (rare, and exact for every offset and
-- change in whole minutes).
CREATE OR REPLACE VIEW operator_presence AS
WITH tz AS (SELECT timezone FROM pushline_config)
SELECT s.operator_id,
       date_trunc('hour', p.at AT TIME ZONE tz.timezone) AS hour,
       sum(extract(epoch FROM
           least(s.logout_at, p.at + g.step) - greatest(s.login_at, p.at)))::double precision AS online_seconds
FROM operator_sessions s
CROSS JOIN tz
CROSS JOIN LATERAL generate_series(local_start('hour', s.login_at, tz.timezone),
                                   last_instant(s.login_at, s.logout_at), interval '1 hour') AS h(at)
CROSS JOIN LATERAL (
    SELECT CASE WHEN (h.at AT TIME ZONE tz.timezone) = date_trunc('hour', h.at AT TIME ZONE tz.timezone)
                 AND (h.at + interval '1 hour' - interval '1 microsecond') AT TIME ZONE tz.timezone
                   = (h.at AT TIME ZONE tz.timezone) + interval '1 hour' - interval '1 microsecond'
                THEN interval '1 hour' ELSE interval '1 minute' END AS step
) AS g
CROSS JOIN LATERAL generate_series(h.at, h.at + interval '59 minutes', g.step) AS p(at)
WHERE s.login_at IS NOT NULL AND s.logout_at IS NOT NULL
  -- Minutes of a cut hour outside the session (a zero-length one keeps its own).
  AND p.at <= last_instant(s.login_at, s.logout_at) AND p.at + g.step > s.login_at
GROUP BY s.operator_id, 2;

-- Conversations open per website and local minute, counted per absolute
-- minute (from the start of the local minute of the conversation's start);
-- a local minute that happened twice (the autumn's repeated hour) shows the
-- larger of its two counts, as a conversation open in both is one conversation.
CREATE OR REPLACE VIEW conversation_concurrency AS
WITH tz AS (SELECT timezone FROM pushline_config),
open_minutes AS (
    SELECT c.website_id, m.at, count(*) AS conversations
    FROM conversations c, tz,
         generate_series(local_start('minute', c.started_at, tz.timezone),
                         last_instant(c.started_at, c.ended_at), interval '1 minute') AS m(at)
    WHERE c.started_at IS NOT NULL AND c.ended_at IS NOT NULL AND c.ended_at >= c.started_at
    GROUP BY c.website_id, m.at
)
SELECT o.website_id,
       date_trunc('minute', o.at AT TIME ZONE tz.timezone) AS minute,
       max(o.conversations) AS conversations
FROM open_minutes o, tz
GROUP BY o.website_id, 2;
