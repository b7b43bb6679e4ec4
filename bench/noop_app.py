"""The reference for the ack path: a Flask POST that does nothing (served with
bench/reference_gunicorn.py)."""

import uuid

from flask import Flask, jsonify

app = Flask(__name__)


@app.post("/push/<token>")
def push(token):
    return jsonify(id=uuid.uuid4().hex), 202
