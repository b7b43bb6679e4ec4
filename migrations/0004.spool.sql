-- Pushes accepted while Redis was unreachable. The web tier inserts (and
-- commits, durably) before it answers 202; workers move them to the queue.
-- depends: 0003.operator-locks

CREATE TABLE spool (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    item bytea NOT NULL,            -- the queue envelope, as it would have been queued
    spooled_at timestamptz NOT NULL DEFAULT now()
);
