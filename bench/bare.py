"""The bare Flask app the web tier is compared with: the same HTTP work, none of Chorus's logic.

``POST /bare`` parses the JSON body and answers 202 with a small JSON object, like
``POST /v1/music/generations`` does, but without authentication, validation or an INSERT;
``GET /bare/<id>`` answers a small JSON object without a database read. It is served by the very
gunicorn command line that serves Chorus (``gunicorn ... bench.bare:app``), so the ratio of the two
isolates what Chorus's own code costs.
"""

from __future__ import annotations

import itertools
from typing import Any

from flask import Flask, Response, jsonify, request

app = Flask(__name__)
_ids = itertools.count(1)


@app.post("/bare")
def create() -> tuple[Response, int]:
    body: Any = request.get_json(force=True)
    # Touch the body as Chorus must (it reads model and prompt), so parsing is not optimised out.
    model = body.get("model") if isinstance(body, dict) else None
    job_id = f"bare_{next(_ids)}"
    response = jsonify(id=job_id, object="music.generation", model=model, status="QUEUED")
    response.headers["Location"] = f"/bare/{job_id}"
    return response, 202


@app.get("/bare/<job_id>")
def read(job_id: str) -> Response:
    return jsonify(id=job_id, object="music.generation", status="QUEUED", audio=None)
