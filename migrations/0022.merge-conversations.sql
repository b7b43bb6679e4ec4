-- conversations_v2 and satisfaction are merged in place instead of recomputed.
--
-- Each of their fields is the earliest or the latest of some events in the
-- order (createdAt, eventId): a min or a max, which a batch can fold into the
-- stored row with its own events alone, atomically (INSERT ... ON CONFLICT DO
-- UPDATE sees the row as last committed, whoever wrote it), given the eventId
-- beside each instant it compares (ties on createdAt are broken by it). So the
-- rows keep those eventIds, and the side tables the recomputes read every
-- conversation's history from, and the conversation lock rows, go: a batch
-- writes a conversation's row once instead of its side rows, its lock and the
-- row recomputed from a lookup of every event it has had. The one count,
-- `assignments`, grows by the pushed events a batch adds to
-- conversation_assignments (unique by eventId within its conversation: a
-- replayed event adds nothing).
--
-- An eventId is folded once: a pushed event when its conversation_assignments
-- row is added, a closed event or an answer when its conversation_event_ids row
-- is (one small row each, unique by conversation and eventId). An event handled
-- again (a replay; a receipt after retention pruned its row, with another
-- createdAt) finds its row there and changes nothing: the first stored stays,
-- as with the side tables.
--
-- The added columns, for analysts too: first_event (the eventId of the earliest
-- pushed event: the one operator_id and, when there is one, the attributes come
-- from), last_assigned_at / last_assigned_event (the latest pushed event:
-- last_operator_id), closed_event (the latest closed event: ended_at,
-- operator_ids); in satisfaction, the eventId of each answer's latest event.
-- depends: 0021.side-table-keys

ALTER TABLE conversations_v2
    ADD COLUMN first_event text COLLATE "C",
    ADD COLUMN last_assigned_at timestamptz,
    ADD COLUMN last_assigned_event text COLLATE "C",
    ADD COLUMN closed_event text COLLATE "C";

UPDATE conversations_v2 c SET first_event = e.event_uuid
FROM (SELECT DISTINCT ON (conversation_id) conversation_id, event_uuid FROM webhook_conversation_events
      WHERE kind = 'pushed' ORDER BY conversation_id, at, event_uuid) AS e
WHERE c.conversation_id = e.conversation_id;
UPDATE conversations_v2 c SET last_assigned_at = e.at, last_assigned_event = e.event_uuid
FROM (SELECT DISTINCT ON (conversation_id) conversation_id, at, event_uuid FROM webhook_conversation_events
      WHERE kind = 'pushed' ORDER BY conversation_id, at DESC, event_uuid DESC) AS e
WHERE c.conversation_id = e.conversation_id;
UPDATE conversations_v2 c SET closed_event = e.event_uuid
FROM (SELECT DISTINCT ON (conversation_id) conversation_id, event_uuid FROM webhook_conversation_events
      WHERE kind = 'closed' ORDER BY conversation_id, at DESC, event_uuid DESC) AS e
WHERE c.conversation_id = e.conversation_id;

ALTER TABLE satisfaction
    ADD COLUMN customer_satisfaction_event text COLLATE "C",
    ADD COLUMN net_promoter_score_event text COLLATE "C",
    ADD COLUMN satisfaction_comment_event text COLLATE "C";

UPDATE satisfaction s SET customer_satisfaction_event = e.event_uuid
FROM (SELECT DISTINCT ON (conversation_id) conversation_id, event_uuid FROM satisfaction_events
      WHERE customer_satisfaction IS NOT NULL ORDER BY conversation_id, at DESC, event_uuid DESC) AS e
WHERE s.conversation_id = e.conversation_id;
UPDATE satisfaction s SET net_promoter_score_event = e.event_uuid
FROM (SELECT DISTINCT ON (conversation_id) conversation_id, event_uuid FROM satisfaction_events
      WHERE net_promoter_score IS NOT NULL ORDER BY conversation_id, at DESC, event_uuid DESC) AS e
WHERE s.conversation_id = e.conversation_id;
UPDATE satisfaction s SET satisfaction_comment_event = e.event_uuid
FROM (SELECT DISTINCT ON (conversation_id) conversation_id, event_uuid FROM satisfaction_events
      WHERE satisfaction_comment IS NOT NULL ORDER BY conversation_id, at DESC, event_uuid DESC) AS e
WHERE s.conversation_id = e.conversation_id;

CREATE TABLE conversation_event_ids (
    conversation_id text NOT NULL,
    event_uuid text COLLATE "C" NOT NULL,   -- eventId of a v2.conversation.closed or satisfaction.answered
    PRIMARY KEY (conversation_id, event_uuid)
);
INSERT INTO conversation_event_ids (conversation_id, event_uuid)
SELECT conversation_id, event_uuid FROM webhook_conversation_events WHERE kind = 'closed'
UNION
SELECT conversation_id, event_uuid FROM satisfaction_events;
GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON conversation_event_ids TO pushline_worker;

DELETE FROM webhook_locks WHERE kind = 'conversation';
DROP TABLE webhook_conversation_events, satisfaction_events;
