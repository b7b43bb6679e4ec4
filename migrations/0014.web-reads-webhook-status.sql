-- The status page shows conversations per day of both formats: the web tier
-- reads the webhooks' daily aggregate (a view of counts, no payload).
-- depends: 0013.webhooks

GRANT SELECT ON conversation_v2_daily TO pushline_web;
