-- JIT off for this database. Pushline's statements are short (a batch's merges,
-- the status page's counts) and the analysts' views are planned on generous row
-- estimates: PostgreSQL compiled user_daily's plan on an empty database for about
-- 0.45 s a query, and a 500-user batch of webhooks for about 0.1 s. Sessions started
-- after this migration get it; an analyst may still SET jit = on for a heavy query.
-- depends: 0018.status-per-day

DO $$
BEGIN
    EXECUTE format('ALTER DATABASE %I SET jit = off', current_database());
END
$$;
