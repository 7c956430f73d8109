"""The bare Flask apps the web tier is compared with, served by Chorus's own gunicorn line.

Two baselines, both plain Flask with no extension, no framework layer and no ORM:

``/bare`` does the durable work any job API must do and nothing else. ``POST /bare`` parses
the JSON body, INSERTs it as a row and commits (one round trip plus the commit, through a
psycopg2 connection pool), then answers 202 with a small job object and a ``Location``;
``GET /bare/<id>`` reads that row by primary key. The gap between Chorus and this is what
Chorus's own logic costs: authentication, validation, the catalog, money, the job object.

``/bare/noio`` does no I/O at all (parse, answer), which shows what the database costs on
this machine.

The table is created by the harness (:func:`create_table`) before the server starts.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import uuid
from typing import Any

from flask import Flask, Response, jsonify, request
from psycopg2.pool import ThreadedConnectionPool

from app.webserver import asgi as served
from config import load_settings

TABLE = "bench_bare_jobs"
app = Flask(__name__)
_ids = itertools.count(1)
_pool: ThreadedConnectionPool | None = None
_pool_lock = threading.Lock()


def dsn(database_url: str) -> str:
    """A libpq DSN from an SQLAlchemy URL (``postgresql+psycopg2://`` → ``postgresql://``)."""
    scheme, rest = database_url.split("://", 1)
    return "postgresql://" + rest if scheme.startswith("postgres") else database_url


def create_table(database_url: str) -> None:
    import psycopg2

    with psycopg2.connect(dsn(database_url)) as conn, conn.cursor() as cur:
        cur.execute(
            f"CREATE TABLE IF NOT EXISTS {TABLE} "
            "(id text PRIMARY KEY, body jsonb NOT NULL, created_at timestamptz NOT NULL)"
        )
        cur.execute(f"TRUNCATE {TABLE}")


def _connections() -> ThreadedConnectionPool:
    global _pool
    if _pool is None:
        with _pool_lock:
            if _pool is None:
                # As many connections as threads, so no request waits for one; and as many
                # kept open (psycopg2's pool closes every returned connection beyond minconn).
                size = int(os.environ.get("WEB_THREADS", "8"))
                _pool = ThreadedConnectionPool(size, size, dsn(os.environ["DATABASE_URL"]))
    return _pool


@app.post("/bare")
def create() -> tuple[Response, int]:
    body: Any = request.get_json(force=True)
    model = body.get("model") if isinstance(body, dict) else None
    job_id = f"bare_{uuid.uuid4().hex}"
    pool = _connections()
    conn = pool.getconn()
    try:
        with conn.cursor() as cur:
            cur.execute(
                "INSERT INTO bench_bare_jobs (id, body, created_at) VALUES (%s, %s, now())",
                (job_id, json.dumps(body)),
            )
        conn.commit()
    finally:
        pool.putconn(conn)
    response = jsonify(id=job_id, object="music.generation", model=model, status="QUEUED")
    response.headers["Location"] = f"/bare/{job_id}"
    return response, 202


@app.get("/bare/<job_id>")
def read(job_id: str) -> tuple[Response, int]:
    pool = _connections()
    conn = pool.getconn()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT body, created_at FROM bench_bare_jobs WHERE id = %s", (job_id,))
            row = cur.fetchone()
        conn.rollback()  # end the read's transaction, as a pool checkin would
    finally:
        pool.putconn(conn)
    if row is None:
        return jsonify(error="not found"), 404
    body, created = row
    return jsonify(
        id=job_id,
        object="music.generation",
        model=body.get("model"),
        status="QUEUED",
        created=int(created.timestamp()),
        audio=None,
    ), 200


@app.post("/bare/noio")
def create_noio() -> tuple[Response, int]:
    body: Any = request.get_json(force=True)
    # Touch the body as Chorus must (it reads model and prompt), so parsing is not optimised out.
    model = body.get("model") if isinstance(body, dict) else None
    job_id = f"bare_{next(_ids)}"
    response = jsonify(id=job_id, object="music.generation", model=model, status="QUEUED")
    response.headers["Location"] = f"/bare/noio/{job_id}"
    return response, 202


@app.get("/bare/noio/<job_id>")
def read_noio(job_id: str) -> Response:
    return jsonify(id=job_id, object="music.generation", status="QUEUED", audio=None)


@app.get("/bare/ping")
def ping() -> Response:
    return jsonify(ok=True)


# What the web process serves, as Chorus's own app is served (app/asgi.py).
asgi = served(app, load_settings())
