"""The OpenAPI document describes every route fully, and the docs page needs no internet.

Both walk whatever the app has when they run (every URL rule, every operation of the spec),
not a fixed list of routes.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import Any

import pytest

METHODS = ("get", "put", "post", "delete", "patch")
# Rules that are the documentation itself, not part of the API.
# /metrics is for Prometheus and /ops/ for operators (app/console), not for clients.
UNDOCUMENTED_ENDPOINTS = ("static", "api-docs.", "metrics", "console.")


@pytest.fixture
def spec(client: Any) -> dict[str, Any]:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    body: dict[str, Any] = response.get_json()
    assert body["openapi"].startswith("3.1")
    return body


def resolve(spec: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target: Any = spec
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any], dict[str, Any]]]:
    return [
        (method.upper(), path, op, item)
        for path, item in spec["paths"].items()
        for method, op in item.items()
        if method in METHODS
    ]


def has_example(media: dict[str, Any]) -> bool:
    return "example" in media or bool(media.get("examples"))


def test_every_route_is_in_the_spec(app: Any, spec: dict[str, Any]) -> None:
    documented = {(m, p) for m, p, _, _ in operations(spec)}
    missing = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint.startswith(UNDOCUMENTED_ENDPOINTS):
            continue
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            if (method, path) not in documented:
                missing.append(f"{method} {path}")
    assert not missing, f"routes missing from /openapi.json: {missing}"


def test_every_operation_is_fully_documented(spec: dict[str, Any]) -> None:
    schemes = spec.get("components", {}).get("securitySchemes", {})
    assert schemes.get("bearerAuth", {}).get("scheme") == "bearer"
    problems: list[str] = []
    ops = operations(spec)
    assert ops
    for method, path, op, item in ops:
        label = f"{method} {path}"

        def problem(text: str, label: str = label) -> None:
            problems.append(f"{label}: {text}")

        if not (op.get("summary") or op.get("description")):
            problem("no summary or description")
        responses = op.get("responses", {})
        if "default" in responses:
            problem("a catch-all 'default' response instead of its statuses")
        statuses = {int(s) for s in responses if s.isdigit()}
        if not any(200 <= s < 300 for s in statuses):
            problem("no documented 2xx response")
        if not any(s >= 400 for s in statuses):
            problem("no documented error response")
        # Bad input is a 400; the one 422 Chorus sends is an Idempotency-Key reused for
        # another request, documented as such.
        if 422 in statuses and "Idempotency-Key" not in responses["422"].get("description", ""):
            problem("documents 422 for something other than a reused Idempotency-Key")

        security = op.get("security", spec.get("security", []))
        if "security" not in op and "security" not in spec:
            problem("does not say whether it needs a key (security)")
        for requirement in security:
            for name in requirement:
                if name not in schemes:
                    problem(f"security scheme {name!r} is not declared")
        if any(security) and not statuses & {401, 403}:
            problem("takes a key but documents no 401/403")

        params = [resolve(spec, p) for p in item.get("parameters", []) + op.get("parameters", [])]
        for param in params:
            if "schema" not in param:
                problem(f"parameter {param['name']!r} has no schema")
            if not param.get("description"):
                problem(f"parameter {param['name']!r} has no description")
        if (params or "requestBody" in op) and not statuses & {400, 404, 422}:
            problem("takes input but documents no 400 (or 404) for bad input")
        if any(p["in"] == "path" for p in params) and 404 not in statuses:
            problem("has a path parameter but documents no 404")

        if "requestBody" in op:
            body = resolve(spec, op["requestBody"])
            for media_type, media in body.get("content", {}).items():
                if "schema" not in media:
                    problem(f"request body {media_type} has no schema")
                if not has_example(media):
                    problem(f"request body {media_type} has no example")

        for status, response in responses.items():
            response = resolve(spec, response)
            if not response.get("description"):
                problem(f"response {status} has no description")
            for media_type, media in response.get("content", {}).items():
                if "schema" not in media:
                    problem(f"response {status} {media_type} has no schema")
                if "json" in media_type and not has_example(media):
                    problem(f"response {status} {media_type} has no example")
            if int(status) >= 400 and "content" not in response:
                problem(f"error response {status} has no body schema")

    assert not problems, "\n".join(problems)


def test_error_examples_match_the_error_schema(spec: dict[str, Any]) -> None:
    """Every example of an error body has the shape the schema promises: OpenAI's on /v1,
    AIMLAPI's on /v2."""
    seen = {"v1": 0, "v2": 0}
    for _, path, op, _ in operations(spec):
        surface = "v2" if path.startswith("/v2/") else "v1"
        for status, response in op["responses"].items():
            if int(status) < 400 or status == "503":
                continue
            media = resolve(spec, response)["content"]["application/json"]
            values = [media["example"]] if "example" in media else []
            values += [resolve(spec, e)["value"] for e in media.get("examples", {}).values()]
            for value in values:
                seen[surface] += 1
                if surface == "v2":
                    assert set(value) == {"message", "path", "requestId", "statusCode", "timestamp"}
                    assert value["statusCode"] == int(status), value
                    assert isinstance(value["message"], str) and value["message"]
                    continue
                error = value["error"]
                assert set(error) == {"message", "type", "param", "code"}, value
                assert isinstance(error["message"], str) and error["message"]
    assert seen["v1"] > 10 and seen["v2"] > 5


# ------------------------------------------------------------------ the docs page


class _Assets(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value:
                self.urls.append(value)


def test_docs_page_and_its_assets_are_served_by_chorus(client: Any) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    # No external URL anywhere in the page: scheme-qualified or protocol-relative.
    assert not re.search(r"(?:https?:)?//[A-Za-z0-9]", html), html
    # Swagger UI's online validator would send the spec to validator.swagger.io.
    assert '"validatorUrl": null' in html

    parser = _Assets()
    parser.feed(html)
    assert len(parser.urls) >= 3, parser.urls  # stylesheet, bundle, preset
    for url in parser.urls:
        asset = client.get(url)
        assert asset.status_code == 200, url
        assert len(asset.get_data()) > 10_000, url
        assert asset.mimetype in ("text/javascript", "application/javascript", "text/css"), url

    spec_url = re.search(r'url: "([^"]+)"', html)
    assert spec_url is not None
    assert client.get(spec_url.group(1)).status_code == 200


def test_docs_page_is_the_only_docs_page(client: Any) -> None:
    # ReDoc was dropped rather than served from a CDN.
    assert client.get("/redoc").status_code == 404


def _texts(node: Any, where: str = "") -> list[tuple[str, str]]:
    """Every description and summary in the document, with where it is."""
    found: list[tuple[str, str]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("description", "summary") and isinstance(value, str):
                found.append((f"{where}/{key}", value))
            else:
                found.extend(_texts(value, f"{where}/{key}"))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found.extend(_texts(value, f"{where}/{i}"))
    return found


def test_the_docs_page_shows_no_literal_rest_markup(spec: dict[str, Any]) -> None:
    # The docs page renders descriptions as Markdown: reST's ``literal`` and :class:`x` roles
    # would show as raw backticks and colons.
    texts = _texts(spec)
    assert len(texts) > 50  # the walk reached the operations and the schemas
    raw = [
        (where, text)
        for where, text in texts
        if "``" in text or re.search(r":(class|func|meth|mod|attr|data|obj|ref):`", text)
    ]
    assert raw == [], "\n".join(f"{w}: {t}" for w, t in raw)
