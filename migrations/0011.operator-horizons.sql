-- Retention horizon per operator, written by `pushline prune`.
--
-- Sessions are paired from operator_events, which prune empties of old rows.
-- `since` is the operator's last login before the cut (the cut itself when
-- there was none): prune keeps the operator's logins and logouts from there
-- on, and a recompute never starts before it, so that a login or logout
-- arriving after a prune cannot delete sessions whose events are gone. The
-- sessions that began before `since` are final; a login or logout created
-- before it that arrives later is stored in events but changes no session.
-- Prune only ever moves a horizon forward (greatest()).
--
-- Installs pruned before this table existed lost operator_events older than
-- their cut while keeping the sessions: such an operator (one with a session
-- older than all its remaining logins/logouts) gets its horizon at its earliest
-- remaining login/logout, or just after its latest session when none remains.
-- depends: 0009.partition-bounds

CREATE TABLE operator_horizons (
    operator_id bigint PRIMARY KEY,
    since timestamptz NOT NULL
);

INSERT INTO operator_horizons (operator_id, since)
SELECT s.operator_id, coalesce(e.first, max(greatest(s.login_at, s.logout_at)) + interval '1 microsecond')
FROM operator_sessions s
LEFT JOIN (SELECT operator_id, min(at) AS first FROM operator_events GROUP BY operator_id) e USING (operator_id)
GROUP BY s.operator_id, e.first
HAVING e.first IS NULL OR min(least(s.login_at, s.logout_at)) < e.first;

-- Workers read it (operator handler); prune, run by the schema owner, writes it.
-- Not analyst-facing.
GRANT SELECT, INSERT, UPDATE ON operator_horizons TO pushline_worker;
