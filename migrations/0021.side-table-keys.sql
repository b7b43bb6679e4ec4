-- One index fewer to maintain per webhook written. The users' side tables had
-- a primary key on eventId and a second index by user or channel for the
-- recomputes; the second, made unique with the eventId last, now does both
-- jobs: the recomputes read through it as before, and a replayed event (same
-- eventId, so the same user, channel and createdAt) still meets its own row
-- and adds nothing (ON CONFLICT DO NOTHING). That no two batches store one
-- eventId is workers.store's claim (webhook_event_ids), not these keys.
-- conversation_assignments likewise: its rows are read by conversation and by
-- operator, never by eventId alone.
-- depends: 0020.webhook-event-ids

ALTER TABLE user_events DROP CONSTRAINT user_events_pkey, ADD PRIMARY KEY (user_id, at, event_uuid);
DROP INDEX user_events_user_at;

ALTER TABLE availability_events DROP CONSTRAINT availability_events_pkey,
    ADD PRIMARY KEY (user_id, channel, at, event_uuid);
DROP INDEX availability_events_order;

ALTER TABLE conversation_assignments DROP CONSTRAINT conversation_assignments_pkey,
    ADD PRIMARY KEY (conversation_id, event_uuid);
DROP INDEX conversation_assignments_conversation;
