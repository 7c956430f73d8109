"""Who may use the console, and proof that a POST came from one of its own pages.

Operators log in with HTTP basic auth against ``OPS_BASIC_AUTH``. Unset, the console does
not exist (404, as any unknown path): it is never public by accident. A browser sends a
basic-auth login with every request to the site, a forged cross-site form included, so each
POST must also carry a token of the console's own forms: the operator's name signed with
SECRET_KEY (itsdangerous), valid for ``TOKEN_MAX_AGE``. Another site cannot read a page to
get one.
"""

from __future__ import annotations

from flask import Response, g, request
from itsdangerous import BadSignature, URLSafeTimedSerializer
from werkzeug.exceptions import Forbidden, NotFound

from app.basic_auth import login, logins
from app.extensions import chorus

REALM = 'Basic realm="chorus-ops", charset="UTF-8"'
TOKEN_FIELD = "csrf_token"  # noqa: S105 - the name of a form field
TOKEN_MAX_AGE = 12 * 3600


def _signer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(chorus().settings.secret_key, salt="chorus.ops.csrf")


def operators_only() -> Response | None:
    """Before every request of the console, its static files included."""
    credentials = logins(chorus().settings.ops_basic_auth)
    if not credentials:
        raise NotFound()
    user = login(request.headers.get("Authorization"), credentials)
    if user is None:
        if request.headers.get("Authorization"):
            # A wrong login spends its address's budget of failures (app.api.limits), as a
            # refused API key does: guessing passwords gets 429 once that is spent.
            g.key_refused = True
        return Response(
            "An operator's login is needed here.\n",
            401,
            {"WWW-Authenticate": REALM, "Content-Type": "text/plain; charset=utf-8"},
        )
    g.operator = user
    if request.method not in ("GET", "HEAD", "OPTIONS") and not _token_valid(user):
        raise Forbidden("This form is stale or did not come from the console; reload the page.")
    return None


def form_token() -> str:
    """The token the console's forms carry, for the operator of this request."""
    return str(_signer().dumps(g.operator))


def _token_valid(user: str) -> bool:
    token = request.form.get(TOKEN_FIELD, "")
    try:
        return bool(_signer().loads(token, max_age=TOKEN_MAX_AGE) == user)
    except BadSignature:  # also the expired ones (SignatureExpired is a BadSignature)
        return False


def no_framing(response: Response) -> Response:
    """The console's pages are never cached, framed (its buttons act) or given scripts."""
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; script-src 'none'; frame-ancestors 'none'; form-action 'self'"
    )
    return response
