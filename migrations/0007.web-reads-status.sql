-- The status page (GET /status.json) reads figures; the web tier still writes
-- nothing but the spool.
-- depends: 0006.presence-concurrency-views

GRANT SELECT ON events, conversation_daily TO pushline_web;
