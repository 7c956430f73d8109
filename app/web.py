"""The Flask application factory."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg2
from flask import Flask, Request, Response, request
from flask.sessions import SessionInterface
from flask_smorest import Api
from marshmallow import fields
from sqlalchemy.exc import DBAPIError, OperationalError
from werkzeug.exceptions import BadRequest, HTTPException, NotFound, RequestTimeout

from app.api import openapi
from app.api.errors import (
    V2_PREFIX,
    ApiError,
    error_response,
    from_validation,
    refusal_response,
)
from app.api.limits import init_rate_limit
from app.api.metrics import init_metrics
from app.api.request_id import init_request_id
from app.api.schemas import OpenAIErrorSchema
from app.db import Database
from app.extensions import Chorus, close_session
from app.jobs.errors import Refused
from app.storage import make_storage
from app.webserver import BODY_CUT_SHORT, LATE_BODY
from config import Settings, load_settings
from config.settings import NO_SIGNING_KEY


class ChorusApi(Api):
    """flask-smorest's Api with Chorus's error bodies.

    webargs reports bad input as 422; the contract wants 400 naming the field, in the shape
    of the request's surface (OpenAI's on ``/v1``, AIMLAPI's on ``/v2``), and so do the 404,
    405 and 413 werkzeug raises. flask-smorest also drops the ``Allow`` header of a 405; it
    is kept here.

    In the OpenAPI document, errors have that shape too, and no operation gets a catch-all
    ``default`` response: each lists the statuses it can answer (``app/api/openapi.py``).
    """

    ERROR_SCHEMA = OpenAIErrorSchema
    DEFAULT_ERROR_RESPONSE_NAME = None

    def init_app(self, app: Flask, *, spec_kwargs: dict[str, Any] | None = None) -> None:
        super().init_app(app, spec_kwargs=spec_kwargs)
        # apispec says "url", which JSON Schema does not know; "uri" is the standard format.
        self.register_field(fields.Url, "string", "uri")
        openapi.register_components(self.spec, OpenAIErrorSchema)

    def handle_http_exception(self, error: HTTPException) -> Response:
        data: dict[str, Any] = getattr(error, "data", None) or {}
        if error.code == 422 and "messages" in data:
            return error_response(from_validation(data["messages"]))
        code = error.code or 500
        message = error.description or error.name
        if code == 400 and "messages" in data:
            message = "We could not parse the JSON body of your request."
        api_error = ApiError(code, str(message), code=error.name.lower().replace(" ", "_"))
        response = error_response(api_error)
        for name, value in error.get_headers():
            if name.lower() != "content-type":
                response.headers[name] = value
        return response


class ChorusRequest(Request):
    """A request whose body, when it cannot be read, is the client's error (400), not a crash.

    The web server de-chunks the body as it is read, so a malformed chunked body (a chunk size
    that is no number, a chunk cut short, no final chunk) surfaces as the server's own
    exception in the middle of a read, whatever the server. Everything that reads the body
    goes through one of these two: the raw bytes (the JSON parser, the idempotency
    fingerprint) or the form parser.
    """

    def get_data(  # type: ignore[override]
        self, cache: bool = True, as_text: bool = False, parse_form_data: bool = False
    ) -> bytes | str:
        with _client_bytes():
            return super().get_data(cache, as_text, parse_form_data)  # type: ignore[call-overload]

    def _load_form_data(self) -> None:
        with _client_bytes():
            super()._load_form_data()


@contextmanager
def _client_bytes() -> Iterator[None]:
    try:
        yield
    except HTTPException:
        raise  # werkzeug's own answers: 413 over the limit, 400 for a body cut short
    except Exception as exc:
        # Whatever the server's reader raises (its classes are its own): the bytes the
        # client sent are not a body.
        raise BadRequest(
            "The request body could not be read: its framing is broken or it was cut short."
        ) from exc


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or load_settings()
    if not settings.secret_key:
        raise ValueError(NO_SIGNING_KEY)
    app = Flask(__name__)
    app.request_class = ChorusRequest
    app.config.update(
        SECRET_KEY=settings.secret_key,
        MAX_CONTENT_LENGTH=settings.max_content_length,
        API_TITLE="Chorus",
        API_VERSION="1.0",
        OPENAPI_VERSION="3.1.0",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_SWAGGER_UI_PATH="docs",
        # Served from app/static (vendored swagger-ui-dist): the docs work with no internet.
        OPENAPI_SWAGGER_UI_URL="/static/swagger-ui/",
        # Swagger UI would otherwise send the spec to validator.swagger.io for a badge.
        OPENAPI_SWAGGER_UI_CONFIG={"validatorUrl": None},
        JSON_SORT_KEYS=False,
    )
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.session_interface = NoCookieSessions()
    # First: a request whose body came too late or cut short is answered before anything
    # looks at it.
    app.before_request(_body_as_sent)
    app.extensions["chorus"] = Chorus(
        settings=settings,
        db=Database(settings, pre_ping=False),
        storage=make_storage(settings),
    )
    app.teardown_appcontext(close_session)
    # Before the rate limit's hooks, so a request's time includes the checks that may refuse it.
    init_metrics(app, settings)

    api = ChorusApi(app, spec_kwargs={"info": {"description": API_DESCRIPTION}})
    from app.api.account import blp as account
    from app.api.events import blp as events
    from app.api.health import blp as health
    from app.api.jobs.views import blp, files
    from app.api.lyrics import blp as lyrics
    from app.api.v2.views import blp as v2
    from app.api.webhooks.views import blp as webhooks
    from app.api.webhooks.views import deliveries
    from app.console import blp as console

    init_request_id(app)
    # One budget per key across every route of these blueprints, not one per route; the
    # console's wrong logins spend their address's failures, as refused API keys do.
    init_rate_limit(
        app, settings, {b.name for b in (blp, account, v2, webhooks, deliveries, events, console)}
    )

    api.register_blueprint(blp)
    api.register_blueprint(files)
    api.register_blueprint(account)
    api.register_blueprint(lyrics)
    api.register_blueprint(v2)
    api.register_blueprint(webhooks)
    api.register_blueprint(deliveries)
    api.register_blueprint(events)
    api.register_blueprint(health)
    app.register_blueprint(console)
    app.register_error_handler(ApiError, error_response)
    app.register_error_handler(Refused, refusal_response)
    app.register_error_handler(DBAPIError, _database_unavailable)
    # The hot statements run on raw connections: the driver's own error, unwrapped.
    app.register_error_handler(psycopg2.OperationalError, _database_unreachable)
    app.after_request(_no_store)
    app.url_value_preprocessor(_no_nul_in_path)
    return app


class NoCookieSessions(SessionInterface):
    """Chorus keeps no browser sessions: callers carry an API key. Flask's default would
    still read and sign a session cookie on every request because SECRET_KEY is set (it
    signs audio links)."""

    def open_session(self, app: Flask, request: Any) -> None:
        return None

    def save_session(self, app: Flask, session: Any, response: Response) -> None:
        return None


def _database_unavailable(error: DBAPIError) -> Response:
    """A database that cannot be reached (refused, full, restarting) or a connection lost
    mid-request is the service's fault, for a moment: 503, come back. Other database errors
    are Chorus's own bugs and stay 500s."""
    if not (error.connection_invalidated or isinstance(error, OperationalError)):
        raise error
    return _database_unreachable(error)


def _database_unreachable(error: Exception) -> Response:
    response = error_response(
        ApiError(503, "The database is unavailable for a moment; retry.", code="unavailable")
    )
    response.headers["Retry-After"] = "1"
    return response


def _body_as_sent() -> None:
    """What the web server flagged about the body (app/webserver.py) in the surface's shape."""
    scope = request.environ.get("asgi.scope", {})
    if scope.get(LATE_BODY):
        raise RequestTimeout("The request body did not arrive in time.")
    if scope.get(BODY_CUT_SHORT):
        raise BadRequest("The request body was cut short: the client closed before sending it all.")


def _no_nul_in_path(endpoint: str | None, values: dict[str, Any] | None) -> None:
    """No id Chorus makes holds a NUL, and Postgres cannot even be asked about one: a path
    naming such a thing names nothing (404), before any view reads it."""
    if values and any(isinstance(v, str) and "\x00" in v for v in values.values()):
        raise NotFound()


def _no_store(response: Response) -> Response:
    # Job objects carry freshly signed links; a cache must not hand out stale ones.
    if request.path.startswith(("/v1/music/", V2_PREFIX)):
        response.headers["Cache-Control"] = "no-store"
    return response


API_DESCRIPTION = """Chorus sells music generation from several upstream providers behind one API.
Submit a job with `POST /v1/music/generations`; it answers at once (202) with a `luid_…` id
and runs in the background. Poll `GET /v1/music/generations/{id}` until `status` is
`SUCCEEDED` (then `audio` links to the track) or `FAILED` (then `error` says why)."""
