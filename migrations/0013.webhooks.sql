-- Today's iAdvize webhooks (CONTRACT 7): the tables and views analysts query,
-- and the side tables the worker recomputes them from.
--
-- Every analyst table is a function of the SET of distinct events. The worker
-- keeps, per handled event, the fields it needs in a side table keyed by
-- `eventId` (the event's identity), and recomputes the rows of each
-- conversation or user a batch touches from that side table, under a row lock
-- on the conversation's or user's entry in webhook_locks (see
-- workers/handlers/webhooks.py). The side tables are not pruned with `events`:
-- a late event is still merged with everything that came before it.
--
-- Event ids compare as text byte by byte (COLLATE "C"), so that "then eventId"
-- means the same order whatever the database's collation.
-- depends: 0010.dst-views 0011.operator-horizons 0012.pending-figures

-- One row per conversation and per user ever seen: the row a batch locks
-- before it recomputes that conversation's or user's rows. Row locks live in
-- the tuples, so a batch (or a rebuild, one transaction over every event) can
-- hold any number of them; advisory locks would fill the shared lock table.
CREATE TABLE webhook_locks (
    kind text NOT NULL CHECK (kind IN ('conversation', 'user')),
    key text COLLATE "C" NOT NULL,
    PRIMARY KEY (kind, key)
);

-- v2.conversation.pushed and v2.conversation.closed, one row per eventId.
CREATE TABLE webhook_conversation_events (
    event_uuid text COLLATE "C" PRIMARY KEY,   -- eventId
    event_id bigint NOT NULL,                  -- events.id of the stored event
    conversation_id text NOT NULL,
    kind text NOT NULL CHECK (kind IN ('pushed', 'closed')),
    at timestamptz NOT NULL,                   -- createdAt
    client_id bigint NOT NULL,
    project_id bigint NOT NULL,
    channel text NOT NULL,
    visitor_id text,
    operator_id bigint,                        -- pushed: operatorId
    operator_ids bigint[],                     -- closed: operatorIds
    CHECK ((kind = 'pushed') = (operator_id IS NOT NULL)),
    CHECK ((kind = 'closed') = (operator_ids IS NOT NULL))
);
CREATE INDEX webhook_conversation_events_conversation ON webhook_conversation_events (conversation_id);

-- satisfaction.answered carrying at least one of the three answers (one with
-- none changes no row, so it is not kept here).
CREATE TABLE satisfaction_events (
    event_uuid text COLLATE "C" PRIMARY KEY,
    event_id bigint NOT NULL,
    conversation_id text NOT NULL,
    at timestamptz NOT NULL,
    customer_satisfaction bigint,
    net_promoter_score integer,
    satisfaction_comment text,
    CHECK (num_nonnulls(customer_satisfaction, net_promoter_score, satisfaction_comment) > 0)
);
CREATE INDEX satisfaction_events_conversation ON satisfaction_events (conversation_id);

-- user.connected and user.disconnected.
CREATE TABLE user_events (
    event_uuid text COLLATE "C" PRIMARY KEY,
    event_id bigint NOT NULL,
    user_id bigint NOT NULL,
    at timestamptz NOT NULL,
    kind text NOT NULL CHECK (kind IN ('connected', 'disconnected'))
);
CREATE INDEX user_events_user_at ON user_events (user_id, at);

-- user.availability.updated: one row per event and channel it lists (the
-- event's last entry for a channel listed twice).
CREATE TABLE availability_events (
    event_uuid text COLLATE "C" NOT NULL,
    channel text NOT NULL,
    event_id bigint NOT NULL,
    user_id bigint NOT NULL,
    at timestamptz NOT NULL,
    status text NOT NULL,
    PRIMARY KEY (event_uuid, channel)
);
CREATE INDEX availability_events_order ON availability_events (user_id, channel, at, event_uuid);

-- Analyst tables.

CREATE TABLE conversations_v2 (
    conversation_id text PRIMARY KEY,
    client_id bigint NOT NULL,
    project_id bigint NOT NULL,
    channel text NOT NULL,
    visitor_id text,
    operator_id bigint,                        -- the earliest pushed event's
    last_operator_id bigint,                   -- the latest pushed event's
    operator_ids bigint[],                     -- the latest closed event's
    assignments integer NOT NULL,              -- distinct pushed events
    started_at timestamptz,
    ended_at timestamptz,
    duration_seconds double precision
        GENERATED ALWAYS AS (extract(epoch FROM ended_at - started_at)::double precision) STORED,
    CHECK (started_at IS NOT NULL OR ended_at IS NOT NULL)
);
CREATE INDEX conversations_v2_started_at ON conversations_v2 (started_at);

CREATE TABLE conversation_assignments (
    event_uuid text COLLATE "C" PRIMARY KEY,
    conversation_id text NOT NULL,
    operator_id bigint NOT NULL,
    assigned_at timestamptz NOT NULL
);
CREATE INDEX conversation_assignments_conversation ON conversation_assignments (conversation_id);
CREATE INDEX conversation_assignments_operator ON conversation_assignments (operator_id, assigned_at);

CREATE TABLE satisfaction (
    conversation_id text PRIMARY KEY,
    customer_satisfaction bigint,
    customer_satisfaction_at timestamptz,
    net_promoter_score integer,
    net_promoter_score_at timestamptz,
    satisfaction_comment text,
    satisfaction_comment_at timestamptz,
    CHECK (num_nonnulls(customer_satisfaction, net_promoter_score, satisfaction_comment) > 0)
);

CREATE TABLE user_sessions (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id bigint NOT NULL,
    connected_at timestamptz,
    disconnected_at timestamptz,
    duration_seconds double precision
        GENERATED ALWAYS AS (extract(epoch FROM disconnected_at - connected_at)::double precision) STORED,
    CHECK (connected_at IS NOT NULL OR disconnected_at IS NOT NULL),
    CHECK (disconnected_at >= connected_at)
);
CREATE INDEX user_sessions_connected ON user_sessions (user_id, connected_at);
CREATE INDEX user_sessions_orphan_disconnect ON user_sessions (user_id, disconnected_at) WHERE connected_at IS NULL;

CREATE TABLE availability_periods (
    user_id bigint NOT NULL,
    channel text NOT NULL,
    status text NOT NULL,
    from_at timestamptz NOT NULL,
    to_at timestamptz,
    duration_seconds double precision
        GENERATED ALWAYS AS (extract(epoch FROM to_at - from_at)::double precision) STORED,
    from_event text COLLATE "C" NOT NULL,      -- eventId of the run's first event: orders runs at one instant
    PRIMARY KEY (user_id, channel, from_at, from_event),
    CHECK (to_at >= from_at)
);

-- Conversations with a pushed event, per local day of their start, project and
-- channel. Satisfaction counts on its conversation's day; nps = 100 x
-- (promoters 9-10 - detractors 0-6) / answers.
CREATE VIEW conversation_v2_daily AS
SELECT (c.started_at AT TIME ZONE tz.timezone)::date AS day,
       c.project_id,
       c.channel,
       count(*) AS conversations,
       count(c.ended_at) AS closed,
       avg(c.duration_seconds) FILTER (WHERE c.ended_at IS NOT NULL) AS avg_duration_seconds,
       sum(c.assignments - 1)::bigint AS transfers,
       count(s.customer_satisfaction) AS csat_answers,
       avg(s.customer_satisfaction)::double precision AS avg_csat,
       count(s.net_promoter_score) AS nps_answers,
       (100 * (count(*) FILTER (WHERE s.net_promoter_score >= 9)
             - count(*) FILTER (WHERE s.net_promoter_score <= 6)))::double precision
           / nullif(count(s.net_promoter_score), 0) AS nps
FROM conversations_v2 c
CROSS JOIN (SELECT timezone FROM pushline_config) tz
LEFT JOIN satisfaction s ON s.conversation_id = c.conversation_id
WHERE c.started_at IS NOT NULL
GROUP BY 1, 2, 3;

-- Per user and local day: sessions by the day they start; seconds of sessions
-- with both ends, and seconds during which at least one channel is AVAILABLE
-- (closed periods only, overlapping channels counted once), each split at
-- local midnights, a day starting at its first instant (0010); assignments by
-- the day of assigned_at.
CREATE VIEW user_daily AS
WITH tz AS (SELECT timezone FROM pushline_config),
session_days AS (
    SELECT s.user_id,
           d.day::date AS day,
           extract(epoch FROM
               least(s.disconnected_at, local_day_start(d.day + interval '1 day', tz.timezone))
             - greatest(s.connected_at, local_day_start(d.day, tz.timezone)))::double precision AS seconds
    FROM user_sessions s, tz,
         generate_series(date_trunc('day', s.connected_at AT TIME ZONE tz.timezone),
                         date_trunc('day', last_instant(s.connected_at, s.disconnected_at) AT TIME ZONE tz.timezone),
                         interval '1 day') AS d(day)
    WHERE s.connected_at IS NOT NULL AND s.disconnected_at IS NOT NULL
),
available AS (
    -- The union of a user's AVAILABLE periods over all channels, as disjoint ranges.
    SELECT p.user_id, unnest(range_agg(tstzrange(p.from_at, p.to_at))) AS r
    FROM availability_periods p
    WHERE p.status = 'AVAILABLE' AND p.to_at IS NOT NULL
    GROUP BY p.user_id
),
available_days AS (
    SELECT a.user_id,
           d.day::date AS day,
           extract(epoch FROM
               least(upper(a.r), local_day_start(d.day + interval '1 day', tz.timezone))
             - greatest(lower(a.r), local_day_start(d.day, tz.timezone)))::double precision AS seconds
    FROM available a, tz,
         generate_series(date_trunc('day', lower(a.r) AT TIME ZONE tz.timezone),
                         date_trunc('day', last_instant(lower(a.r), upper(a.r)) AT TIME ZONE tz.timezone),
                         interval '1 day') AS d(day)
),
facts AS (
    SELECT user_id, day, 0 AS sessions, seconds AS connected_seconds, 0 AS assignments,
           0::double precision AS available_seconds
    FROM session_days
    UNION ALL
    SELECT s.user_id, (s.connected_at AT TIME ZONE tz.timezone)::date, 1, 0, 0, 0
    FROM user_sessions s, tz WHERE s.connected_at IS NOT NULL
    UNION ALL
    SELECT a.operator_id, (a.assigned_at AT TIME ZONE tz.timezone)::date, 0, 0, 1, 0
    FROM conversation_assignments a, tz
    UNION ALL
    SELECT user_id, day, 0, 0, 0, seconds FROM available_days
)
SELECT user_id, day,
       sum(sessions)::bigint AS sessions,
       sum(connected_seconds)::double precision AS connected_seconds,
       sum(assignments)::bigint AS assignments,
       sum(available_seconds)::double precision AS available_seconds
FROM facts
GROUP BY user_id, day;

-- Analysts read the tables and views, and nothing else (not the side tables).
GRANT SELECT ON conversations_v2, conversation_assignments, satisfaction, user_sessions, availability_periods,
    conversation_v2_daily, user_daily TO analyst;
-- Workers maintain all of them; TRUNCATE for `replay --rebuild`.
GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON webhook_locks, webhook_conversation_events, satisfaction_events,
    user_events, availability_events, conversations_v2, conversation_assignments, satisfaction, user_sessions,
    availability_periods TO pushline_worker;
