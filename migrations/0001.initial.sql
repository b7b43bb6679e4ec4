-- Pushline schema: events as received, and the tables analysts query.

-- Settings the views need (written by `pushline migrate` from PUSH_TIMEZONE).
CREATE TABLE pushline_config (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    timezone text NOT NULL DEFAULT 'UTC'
);
INSERT INTO pushline_config DEFAULT VALUES;

-- One row per distinct event: same name, same datetime.created text, equal parameters.
CREATE TABLE events (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_key uuid NOT NULL UNIQUE,        -- first 128 bits of sha256(canonical name, created, parameters)
    source text NOT NULL,
    name text NOT NULL,
    created_at timestamptz,                -- null only when the event's datetime is unusable
    sent_at timestamptz,
    received_at timestamptz NOT NULL,      -- first receipt
    deliveries integer NOT NULL DEFAULT 1 CHECK (deliveries >= 1),
    -- The receipt id of each accepted push of this event (the id its 202 returned),
    -- so that a queue item delivered twice never counts twice in deliveries.
    receipt_ids text[] NOT NULL,
    payload jsonb NOT NULL,                -- as first received
    status text NOT NULL CHECK (status IN ('processed', 'rejected', 'unhandled')),
    error text,
    processed_at timestamptz NOT NULL DEFAULT now(),
    CHECK ((status = 'processed') = (error IS NULL)),
    CHECK (deliveries = cardinality(receipt_ids))
);
-- Replay looks for the few events that are not processed; a partial index
-- costs nothing on the insert of a processed one.
CREATE INDEX events_not_processed ON events (status, name) WHERE status <> 'processed';
CREATE INDEX events_created_at ON events (created_at);

CREATE TABLE conversations (
    conversation_id bigint PRIMARY KEY,
    type text NOT NULL CHECK (type IN ('chat', 'call', 'video')),
    operator_id bigint NOT NULL,
    website_id bigint NOT NULL,
    group_id bigint NOT NULL,
    custom_data jsonb,
    started_at timestamptz,
    ended_at timestamptz,
    duration_seconds double precision
        GENERATED ALWAYS AS (extract(epoch FROM ended_at - started_at)::double precision) STORED,
    -- Which event the attributes above come from (see conversation_attrs_win).
    attrs_from text NOT NULL CHECK (attrs_from IN ('start', 'end')),
    attrs_created_at timestamptz NOT NULL,
    attrs_event_key uuid NOT NULL,
    CHECK (started_at IS NOT NULL OR ended_at IS NOT NULL)
);
CREATE INDEX conversations_started_at ON conversations (started_at);

-- Attributes come from the earliest start; from the latest end while no start
-- is known; equal times fall to the smaller event key. A total order, so
-- merging candidates in any order gives the same winner.
CREATE FUNCTION conversation_attrs_win(
    new_from text, new_at timestamptz, new_key uuid,
    old_from text, old_at timestamptz, old_key uuid
) RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN new_from <> old_from THEN new_from = 'start'
        WHEN new_from = 'start' THEN (new_at, new_key) < (old_at, old_key)
        ELSE (new_at, old_key) > (old_at, new_key)
    END
$$;

CREATE TABLE operator_sessions (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    operator_id bigint NOT NULL,
    login_at timestamptz,
    logout_at timestamptz,
    duration_seconds double precision
        GENERATED ALWAYS AS (extract(epoch FROM logout_at - login_at)::double precision) STORED,
    CHECK (login_at IS NOT NULL OR logout_at IS NOT NULL),
    CHECK (logout_at >= login_at)
);
CREATE INDEX operator_sessions_login ON operator_sessions (operator_id, login_at);
CREATE INDEX operator_sessions_orphan_logout ON operator_sessions (operator_id, logout_at) WHERE login_at IS NULL;

-- Processed logins and logouts, typed, from which sessions are paired.
CREATE TABLE operator_events (
    event_id bigint PRIMARY KEY REFERENCES events (id) ON DELETE CASCADE,
    operator_id bigint NOT NULL,
    at timestamptz NOT NULL,
    kind text NOT NULL CHECK (kind IN ('login', 'logout'))
);
CREATE INDEX operator_events_operator_at ON operator_events (operator_id, at);
