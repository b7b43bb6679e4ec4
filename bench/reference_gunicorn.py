"""gunicorn settings for the ack path's reference, `bench.noop_app:app`.

The reference is a no-op Flask POST served as well as gunicorn serves it on a
small machine: threaded workers keep wrk's connections alive instead of paying an
accept and a close per request, and there is no access log to write. Pushline's
web tier keeps its own settings (web/gunicorn.conf.py); the ratio is how close it
comes to this.
"""

worker_class = "gthread"
workers = 4
threads = 4
accesslog = None
errorlog = "-"
loglevel = "warning"
