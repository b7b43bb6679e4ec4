-- Least privilege: grant these NOLOGIN roles to the login users of each tier.
--   pushline_web     only what the fallback needs: INSERT into spool
--   pushline_worker  read and write the tables it maintains
--   analyst          (0002) read the tables and views, nothing else
-- depends: 0004.spool

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pushline_web') THEN
        CREATE ROLE pushline_web NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pushline_worker') THEN
        CREATE ROLE pushline_worker NOLOGIN;
    END IF;
END
$$;

GRANT INSERT ON spool TO pushline_web;
GRANT SELECT, INSERT, UPDATE, DELETE ON events, conversations, operator_sessions, operator_events, spool
    TO pushline_worker;
GRANT TRUNCATE ON conversations, operator_sessions, operator_events TO pushline_worker;  -- replay --rebuild
GRANT SELECT ON pushline_config TO pushline_worker;
