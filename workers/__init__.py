"""The worker tier: a Celery worker whose consumer drains the event queue."""
