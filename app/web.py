"""The Flask application factory."""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, jsonify, request
from flask_smorest import Api
from sqlalchemy import text
from werkzeug.exceptions import HTTPException

from app.api.errors import ApiError, from_validation, openai_response
from app.api.limits import init_limiter
from app.db import Database
from app.extensions import Chorus, chorus, close_session
from app.storage import LocalStorage
from config import Settings, load_settings


class ChorusApi(Api):
    """flask-smorest's Api with Chorus's error bodies.

    webargs reports bad input as 422; the contract wants 400 naming the field, in OpenAI's
    shape. flask-smorest also drops the ``Allow`` header of a 405; it is kept here.
    """

    def handle_http_exception(self, error: HTTPException) -> Response:
        data: dict[str, Any] = getattr(error, "data", None) or {}
        if error.code == 422 and "messages" in data:
            return openai_response(from_validation(data["messages"]))
        code = error.code or 500
        message = error.description or error.name
        if code == 400 and "messages" in data:
            message = "We could not parse the JSON body of your request."
        api_error = ApiError(code, str(message), code=error.name.lower().replace(" ", "_"))
        response = openai_response(api_error)
        for name, value in error.get_headers():
            if name.lower() != "content-type":
                response.headers[name] = value
        return response


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or load_settings()
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=settings.secret_key,
        MAX_CONTENT_LENGTH=settings.max_content_length,
        API_TITLE="Chorus",
        API_VERSION="1.0",
        OPENAPI_VERSION="3.1.0",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_SWAGGER_UI_PATH="docs",
        OPENAPI_SWAGGER_UI_URL="https://cdn.jsdelivr.net/npm/swagger-ui-dist/",
        OPENAPI_REDOC_PATH="redoc",
        OPENAPI_REDOC_URL="https://cdn.jsdelivr.net/npm/redoc/bundles/redoc.standalone.js",
        JSON_SORT_KEYS=False,
    )
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["chorus"] = Chorus(
        settings=settings, db=Database(settings), storage=LocalStorage(settings.storage_dir)
    )
    app.teardown_appcontext(close_session)

    api = ChorusApi(app, spec_kwargs={"info": {"description": API_DESCRIPTION}})
    from app.jobs.views import blp, files
    from app.money.views import blp as account
    from app.webhooks.views import blp as webhooks
    from app.webhooks.views import deliveries

    limiter = init_limiter(app, settings)
    for blueprint in (blp, account, webhooks, deliveries):
        # One budget per key across every route, not one per route.
        limiter.shared_limit(settings.rate_limit, scope="api")(blueprint)

    api.register_blueprint(blp)
    api.register_blueprint(files)
    api.register_blueprint(account)
    api.register_blueprint(webhooks)
    api.register_blueprint(deliveries)
    app.register_error_handler(ApiError, openai_response)
    app.add_url_rule("/healthz", "healthz", healthz)
    app.after_request(_no_store)
    return app


def healthz() -> tuple[Response, int]:
    """Up, and able to reach its database."""
    try:
        with chorus().db.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any database fault means "not healthy"
        return jsonify(status="unhealthy", database=type(exc).__name__), 503
    return jsonify(status="ok"), 200


def _no_store(response: Response) -> Response:
    # Job objects carry freshly signed links; a cache must not hand out stale ones.
    if request.path.startswith("/v1/music/"):
        response.headers["Cache-Control"] = "no-store"
    return response


API_DESCRIPTION = """Chorus sells music generation from several upstream providers behind one API.
Submit a job with `POST /v1/music/generations`; it answers at once (202) with a `luid_…` id
and runs in the background. Poll `GET /v1/music/generations/{id}` until `status` is
`SUCCEEDED` (then `audio` links to the track) or `FAILED` (then `error` says why)."""
