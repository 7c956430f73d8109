"""CONTRACT §1a: POST and GET /v1/music/generations, rule by rule, on real Postgres."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
import sqlalchemy as sa

from app.jobs.models import Job
from tests.conftest import GOOD_BODY, auth, job_rows, statements_on

pytestmark = pytest.mark.usefixtures("catalog")

URL = "/v1/music/generations"


def error_of(response: Any) -> dict[str, Any]:
    body = response.get_json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    return dict(body["error"])


# ------------------------------------------------------------------ rule 1: key


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer "},
        {"Authorization": "Bearer chs_not-a-real-key"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
    ],
)
def test_missing_or_unknown_key_is_403_before_anything_else(
    client: Any, db: Any, headers: dict[str, str]
) -> None:
    # Even an empty body: the key is checked first, as in the seed.
    response = client.post(URL, json={}, headers=headers)
    assert response.status_code == 403
    assert error_of(response)["type"] == "permission_error"
    assert job_rows(db) == []
    assert client.get(f"{URL}/luid_x", headers=headers).status_code == 403


def test_revoked_key_is_403(client: Any, db: Any, api_key: str) -> None:
    from app.tenancy.models import ApiKey

    with db.transaction() as session:
        session.execute(sa.update(ApiKey).values(revoked_at=dt.datetime.now(dt.UTC)))
    assert client.post(URL, json=GOOD_BODY, headers=auth(api_key)).status_code == 403


# ------------------------------------------------------------------ rule 2: required fields


@pytest.mark.parametrize("field", ["model", "catelogid", "prompt", "lyrics"])
@pytest.mark.parametrize("how", ["absent", "empty", "blank", "null"])
def test_required_field_missing_or_empty(
    client: Any, db: Any, api_key: str, field: str, how: str
) -> None:
    body = dict(GOOD_BODY)
    if how == "absent":
        del body[field]
    else:
        body[field] = {"empty": "", "blank": "   ", "null": None}[how]
    response = client.post(URL, json=body, headers=auth(api_key))
    assert response.status_code == 400
    error = error_of(response)
    assert error["message"] == f"Missing required parameter: {field}"
    assert error["param"] == field
    assert error["type"] == "invalid_request_error"
    assert job_rows(db) == []


def test_first_missing_field_in_seed_order_is_reported(client: Any, api_key: str) -> None:
    response = client.post(URL, json={"lyrics": "x"}, headers=auth(api_key))
    assert error_of(response)["param"] == "model"
    response = client.post(URL, json={"model": "music-2.6", "lyrics": "x"}, headers=auth(api_key))
    assert error_of(response)["param"] == "catelogid"


# ------------------------------------------------------------------ rule 3: catalog


@pytest.mark.parametrize(
    ("model", "catelogid"),
    [
        ("no-such-model", "music_gen"),
        ("music-2.6", "no_such_category"),
        ("MUSIC-2.6", "music_gen"),
    ],
)
def test_unknown_model_or_category_is_400(
    client: Any, db: Any, api_key: str, model: str, catelogid: str
) -> None:
    response = client.post(
        URL, json={**GOOD_BODY, "model": model, "catelogid": catelogid}, headers=auth(api_key)
    )
    assert response.status_code == 400
    error = error_of(response)
    assert error["param"] == "model"
    assert error["code"] == "model_not_found"
    assert job_rows(db) == []


def test_unpublished_model_is_400(client: Any, db: Any, api_key: str) -> None:
    from app.catalog.models import Model

    with db.transaction() as session:
        session.execute(
            sa.update(Model).where(Model.name == "music-2.6").values(status="unpublished")
        )
    response = client.post(URL, json=GOOD_BODY, headers=auth(api_key))
    assert response.status_code == 400
    assert error_of(response)["code"] == "model_not_found"


def test_category_matches_by_id_or_name(client: Any, api_key: str) -> None:
    for catelogid in ("music_gen", "Music generation"):
        response = client.post(
            URL, json={**GOOD_BODY, "catelogid": catelogid}, headers=auth(api_key)
        )
        assert response.status_code == 202, response.get_json()
        assert response.get_json()["catelogid"] == catelogid


# ------------------------------------------------------------------ rule 5: accepted


def test_accepted_job_object_and_location(client: Any, db: Any, api_key: str) -> None:
    response = client.post(
        URL, json={**GOOD_BODY, "metadata": {"order": "42"}}, headers=auth(api_key)
    )
    assert response.status_code == 202
    job = response.get_json()
    assert job["id"].startswith("luid_") and len(job["id"]) == 31
    assert job["object"] == "music.generation"
    assert job["model"] == "music-2.6"
    assert job["catelogid"] == "music_gen"
    assert job["status"] == "QUEUED"
    assert isinstance(job["created"], int)
    assert job["audio"] is None and job["audio_info"] is None and job["error"] is None
    assert job["metadata"] == {"order": "42"}
    assert response.headers["Location"].endswith(f"{URL}/{job['id']}")
    (row,) = job_rows(db)
    assert row.id == job["id"] and row.status == "QUEUED"
    assert row.next_action_at is not None and row.deadline_at > row.created_at

    again = client.get(f"{URL}/{job['id']}", headers=auth(api_key))
    assert again.status_code == 200
    assert again.get_json()["id"] == job["id"]


def test_ids_sort_by_creation(client: Any, api_key: str) -> None:
    ids = [
        client.post(URL, json=GOOD_BODY, headers=auth(api_key)).get_json()["id"] for _ in range(5)
    ]
    assert ids == sorted(ids)


# ------------------------------------------------------------------ other bad input


@pytest.mark.parametrize(
    ("patch", "param"),
    [
        ({"model": 123}, "model"),
        ({"prompt": ["a"]}, "prompt"),
        ({"output_format": "mp4"}, "output_format"),
        ({"audio_setting": {"sample_rate": 12345}}, "audio_setting.sample_rate"),
        ({"audio_setting": {"bitrate": "fast"}}, "audio_setting.bitrate"),
        ({"audio_setting": {"format": "ogg"}}, "audio_setting.format"),
        ({"audio_setting": {"speed": 2}}, "audio_setting.speed"),
        ({"audio_setting": "loud"}, "audio_setting"),
        ({"temperature": 0.3}, "temperature"),
        ({"callback_url": "not a url"}, "callback_url"),
        ({"callback_url": "ftp://example.com/x"}, "callback_url"),
        ({"metadata": {"k": 1}}, "metadata.k"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({"prompt": "nul\x00byte"}, "prompt"),
        ({"lyrics": "x" * 20_001}, "lyrics"),
        ({"reference_audio_url": "https://example.com/a.mp3"}, "reference_audio_url"),
    ],
)
def test_bad_values_are_400_naming_the_field(
    client: Any, db: Any, api_key: str, patch: dict[str, Any], param: str
) -> None:
    response = client.post(URL, json={**GOOD_BODY, **patch}, headers=auth(api_key))
    assert response.status_code == 400, response.get_json()
    error = error_of(response)
    assert error["param"] == param, error
    assert param.split(".")[-1] in error["message"]
    assert job_rows(db) == []


@pytest.mark.parametrize(
    ("model", "field", "length"),
    [
        ("music-1.5", "prompt", 9),
        ("music-1.5", "prompt", 301),
        ("music-2.0", "lyrics", 3001),
        ("music-2.6", "lyrics", 3501),
    ],
)
def test_per_model_length_limits(
    client: Any, api_key: str, model: str, field: str, length: int
) -> None:
    body = {**GOOD_BODY, "model": model, field: "x" * length}
    response = client.post(URL, json=body, headers=auth(api_key))
    assert response.status_code == 400
    error = error_of(response)
    assert error["param"] == field and model in error["message"]


@pytest.mark.parametrize(
    ("data", "content_type"),
    [
        ("{not json", "application/json"),
        ("[1, 2]", "application/json"),
        ("model=music-2.6", "application/x-www-form-urlencoded"),
        ("", "text/plain"),
        ("[" * 10_000 + "]" * 10_000, "application/json"),  # deeper than any parser goes
        ('{"model": "music-2.6", "n": ' + "9" * 5_000 + "}", "application/json"),
        ('{"model": "music-2.6\u0000"}', "application/json"),
    ],
)
def test_unparseable_bodies_are_400_not_500(
    client: Any, db: Any, api_key: str, data: str, content_type: str
) -> None:
    response = client.post(URL, data=data, content_type=content_type, headers=auth(api_key))
    assert response.status_code == 400
    error_of(response)
    assert job_rows(db) == []


# No waiter slots: the header is read, and the answer comes at once instead of in 60 s.
@pytest.mark.env(WAIT_MAX_WAITERS="0")
def test_a_wait_written_with_thousands_of_digits_is_the_longest_wait_not_a_500(
    client: Any, db: Any, api_key: str
) -> None:
    # Headers are read before the job is stored: a failure there must not leave a job behind
    # that the client's retry would double.
    headers = {**auth(api_key), "Prefer": "wait=" + "9" * 5_000}
    response = client.post(URL, json=GOOD_BODY, headers=headers)
    assert response.status_code == 202, response.get_json()
    assert len(job_rows(db)) == 1


def test_oversized_body_is_413(client: Any, api_key: str) -> None:
    response = client.post(
        URL, data="x" * 2_000_000, content_type="application/json", headers=auth(api_key)
    )
    assert response.status_code == 413
    error_of(response)


def test_wrong_method_is_405_with_allow(client: Any, api_key: str) -> None:
    response = client.delete(URL, headers=auth(api_key))
    assert response.status_code == 405
    assert "POST" in response.headers["Allow"]


# ------------------------------------------------------------------ tenancy


def test_tenant_sees_only_its_own_jobs(client: Any, api_key: str, other_key: str) -> None:
    mine = client.post(URL, json=GOOD_BODY, headers=auth(api_key)).get_json()["id"]
    theirs = client.get(f"{URL}/{mine}", headers=auth(other_key))
    unknown = client.get(f"{URL}/luid_00000000000000000000000000", headers=auth(other_key))
    assert theirs.status_code == unknown.status_code == 404
    assert error_of(theirs)["message"].replace(mine, "ID") == error_of(unknown)["message"].replace(
        "luid_00000000000000000000000000", "ID"
    )


def test_keys_are_stored_hashed(db: Any, api_key: str) -> None:
    from app.tenancy.models import ApiKey

    with db.session() as session:
        (row,) = session.scalars(sa.select(ApiKey)).all()
    assert api_key not in (row.key_hash, row.display_prefix)
    assert len(row.key_hash) == 64 and api_key.startswith(row.display_prefix)
    with db.engine.connect() as conn:
        dump = " ".join(str(v) for r in conn.execute(sa.text("SELECT * FROM api_keys")) for v in r)
    assert api_key not in dump


def test_openapi_and_health(client: Any) -> None:
    spec = client.get("/openapi.json").get_json()
    assert "/v1/music/generations" in spec["paths"]
    assert "/v1/music/generations/{job_id}" in spec["paths"]
    assert client.get("/healthz").get_json() == {"status": "ok"}
    assert client.get("/docs").status_code == 200


def test_get_other_job_fields_when_failed(client: Any, db: Any, api_key: str) -> None:
    job_id = client.post(URL, json=GOOD_BODY, headers=auth(api_key)).get_json()["id"]
    with db.transaction() as session:
        session.execute(
            sa.update(Job).values(
                status="FAILED", error_code="upstream_failed", error_message="boom"
            )
        )
    job = client.get(f"{URL}/{job_id}", headers=auth(api_key)).get_json()
    assert job["status"] == "FAILED"
    assert job["error"] == {"code": "upstream_failed", "message": "boom"}


def test_a_database_restart_is_a_503_once_then_served(
    app: Any, client: Any, db: Any, api_key: str
) -> None:
    """The API pings no connection before use: the one request that finds its connection
    dead answers 503 with Retry-After (never a 500), and the renewed pool serves the next."""
    created = client.post("/v1/music/generations", json=GOOD_BODY, headers=auth(api_key))
    assert created.status_code == 202
    job_id = created.json["id"]
    web_db = app.extensions["chorus"].db
    pids = []
    for web_engine in (web_db.engine, web_db.reader):  # its two pools
        with web_engine.connect() as conn:
            pids.append(conn.connection.dbapi_connection.get_backend_pid())  # type: ignore[union-attr]
    # What a Postgres restart does to the API's pooled connections.
    with db.engine.connect() as conn:
        for pid in pids:
            conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})

    refused = client.get(f"/v1/music/generations/{job_id}", headers=auth(api_key))
    assert refused.status_code == 503, refused.json
    assert refused.headers["Retry-After"] == "1"
    assert refused.json["error"]["code"] == "unavailable"
    served = client.get(f"/v1/music/generations/{job_id}", headers=auth(api_key))
    assert served.status_code == 200, served.json


# The statements' own SQL is what these tests read: unprepared, it goes as it is.
@pytest.mark.env(DATABASE_PREPARE="false")
def test_reading_a_job_is_one_statement_and_still_checks_the_key(
    app: Any, client: Any, db: Any, api_key: str, other_key: str
) -> None:
    """The key and the job come back together, outside any transaction (autocommit: no
    BEGIN, no ROLLBACK); revocation and isolation still hold."""
    job_id = client.post("/v1/music/generations", json=GOOD_BODY, headers=auth(api_key)).json["id"]
    web_db = app.extensions["chorus"].db
    with statements_on(engine=web_db.engine, reader=web_db.reader) as statements:
        read = client.get(f"/v1/music/generations/{job_id}", headers=auth(api_key))
        v2 = client.get(
            "/v2/generate/audio", query_string={"generation_id": job_id}, headers=auth(api_key)
        )
    assert read.status_code == 200 and read.json["id"] == job_id
    assert v2.status_code == 200 and v2.json["id"] == job_id
    assert statements["engine"] == [], statements
    assert len(statements["reader"]) == 2, statements
    with web_db.reader.connect() as conn:
        assert conn.connection.dbapi_connection.autocommit is True  # type: ignore[union-attr]
    # Another org's key finds nothing; a revoked key is refused before anything is read.
    assert client.get(f"/v1/music/generations/{job_id}", headers=auth(other_key)).status_code == 404
    with db.transaction() as session:
        session.execute(sa.text("UPDATE api_keys SET revoked_at = now()"))
    assert client.get(f"/v1/music/generations/{job_id}", headers=auth(api_key)).status_code == 403


@pytest.mark.env(DATABASE_PREPARE="false")
def test_a_submit_far_below_the_cap_is_one_autocommit_statement(
    app: Any, client: Any, db: Any, api_key: str
) -> None:
    """No transaction of the session's: the key, then the job's INSERT, each its own."""
    web_db = app.extensions["chorus"].db
    assert client.post(URL, json=GOOD_BODY, headers=auth(api_key)).status_code == 202
    with statements_on(engine=web_db.engine, reader=web_db.reader) as statements:
        created = client.post(URL, json=GOOD_BODY, headers=auth(api_key))
    assert created.status_code == 202, created.json
    assert statements["engine"] == [], statements
    assert len(statements["reader"]) == 2, statements
    assert "INSERT INTO jobs" in statements["reader"][1], statements
    stored = client.get(created.json["urls"]["get"], headers=auth(api_key))
    assert stored.json == {**created.json, "audio": None}
    assert stored.json["metadata"] == {}


def test_hot_statements_are_prepared_once_per_connection(
    app: Any, client: Any, api_key: str
) -> None:
    """By default (DATABASE_PREPARE) the key+job read is PREPAREd once on a connection and
    only EXECUTEd after; a connection that lost it (DEALLOCATE ALL, as a pooler's reset
    does) prepares it again and still answers."""
    reader = app.extensions["chorus"].db.reader
    job_id = client.post(URL, json=GOOD_BODY, headers=auth(api_key)).json["id"]

    def read() -> list[str]:
        with statements_on(reader=reader) as statements:
            response = client.get(f"{URL}/{job_id}", headers=auth(api_key))
        assert response.status_code == 200 and response.json["id"] == job_id, response.json
        return [sql.split(" (")[0] for sql in statements["reader"]]

    first = read()
    assert first[-1].startswith("EXECUTE chorus_hot_"), first
    name = first[-1].removeprefix("EXECUTE ")
    assert read() == [f"EXECUTE {name}"]
    with reader.connect() as conn:  # the pool's one connection: the test client is serial
        conn.exec_driver_sql("DEALLOCATE ALL")
    assert read() == [f"EXECUTE {name}", f"PREPARE {name}", f"EXECUTE {name}"]
    assert read() == [f"EXECUTE {name}"]
    # Revocation still shows at once through the prepared statement.
    with reader.connect() as conn:
        conn.exec_driver_sql("UPDATE api_keys SET revoked_at = now()")
    assert client.get(f"{URL}/{job_id}", headers=auth(api_key)).status_code == 403


def test_a_jobs_urls_are_its_routes_under_any_host_and_root(
    app: Any, client: Any, api_key: str
) -> None:
    """The URLs in a job object are the routes url_for gives, for the host and mount point
    each request came through."""
    from flask import url_for

    for host, root in (("localhost", ""), ("chorus.example:8443", "/api"), ("localhost", "")):
        environ = {"SCRIPT_NAME": root, "HTTP_HOST": host}
        job = client.post(
            URL, json=GOOD_BODY, headers=auth(api_key), environ_overrides=environ
        ).get_json()
        with app.test_request_context(environ_overrides=environ):
            assert job["urls"]["get"] == url_for(
                "generations.Generation", job_id=job["id"], _external=True
            )
        assert job["urls"]["get"] == f"http://{host}{root}{URL}/{job['id']}"
        assert job["urls"]["content"] is None


def test_an_id_with_a_nul_character_is_unknown_not_a_500(client: Any, api_key: str) -> None:
    assert client.get("/v1/music/generations/a%00b", headers=auth(api_key)).status_code == 404
    for path in ("a%00b/cancel", "a%00b/deliveries", "luid_x/deliveries/msg_%00/redeliver"):
        answer = client.post if path.endswith(("cancel", "redeliver")) else client.get
        assert answer(f"{URL}/{path}", headers=auth(api_key)).status_code == 404, path
    refused = client.get(
        "/v2/generate/audio", query_string={"generation_id": "\x00"}, headers=auth(api_key)
    )
    # /v2 validates its query first: a 400 naming the field, in AIMLAPI's shape.
    assert refused.status_code == 400, refused.get_json()
    assert "generation_id" in refused.get_json()["message"]
