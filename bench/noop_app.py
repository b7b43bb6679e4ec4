"""The reference for the ack path: a Flask POST that does nothing, under the same gunicorn."""

import uuid

from flask import Flask, jsonify

app = Flask(__name__)


@app.post("/push/<token>")
def push(token):
    return jsonify(id=uuid.uuid4().hex), 202
