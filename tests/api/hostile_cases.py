"""The hostile-input corpus: requests no client should send, as data.

Each ``Case`` is one request, rendered to bytes and sent over a real socket by
``tests/api/test_hostile_inputs.py``. Placeholders are filled in at send time: ``{KEY}`` (a
funded org's key), ``{BROKE}`` (an org with no money: a valid submit stops at its balance, so
nothing is queued and no ``Prefer: wait`` holds the answer), ``{JOB}`` (a job of the funded
org) and ``{PORT}``.

Most cases are families crossed with the routes of the API (every rule of Flask's url_map,
checked by the test): header oddities on every route, query garbage on every GET, body
garbage on every route that reads one, id garbage on every route that takes one. The rest are
transport cases, written as raw bytes: the HTTP framing itself is broken, so the web server
(not Chorus) may be the one to refuse them, in its own words.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

Header = tuple[str, bytes]


@dataclass(frozen=True)
class Case:
    name: str
    method: str = "GET"
    target: bytes = b"/v1/balance"
    headers: tuple[Header, ...] = ()
    body: bytes | None = None
    # Which key goes in ``Authorization: Bearer``; None sends no Authorization of its own.
    key: str | None = "{KEY}"
    content_type: bytes | None = b"application/json"
    # The request verbatim (placeholders filled), instead of one built from the fields above.
    raw: bytes | None = None
    # Stop sending after the request (shut the write side): a body that ends early.
    half_close: bool = False
    # Close the connection without reading: nobody is left to answer.
    abort: bool = False
    # The bytes never make a whole request (no end of headers, not HTTP at all): closing
    # without an answer is as right as a 400.
    may_drop: bool = False
    # Not the API (the operators' console, /metrics): a 4xx need not be the contract's JSON.
    any_body: bool = False
    # Send the request in pieces this many seconds apart (a slow client), then go on as above.
    pace: float = 0.0
    # The framing is broken: the web server may refuse it itself (status < 500 still).
    transport: bool = False
    # A transfer coding no server implements: RFC 9112 §6.1 asks the server for 501 Not
    # Implemented, the one 5xx that is the client's doing (the server's answer, never Chorus's).
    not_implemented: bool = False


@dataclass(frozen=True)
class Route:
    method: str
    target: str
    body: bytes | None = None
    key: str = "{KEY}"
    # The rule of Flask's url_map this route exercises.
    rule: str = ""
    # An operator's page, not the API: its refusals (a login asked for) are not JSON.
    any_body: bool = False


GOOD = {
    "model": "music-2.6",
    "catelogid": "music_gen",
    "prompt": "Pop music, happy, suitable for a sunny day",
    "lyrics": "[Verse]\nWalking down the street\n[Chorus]\nDancing in the sun",
}
GOOD_V2 = {"model": "music-2.6", "prompt": "A calm piano piece", "lyrics": "[Verse]\nla la"}


def js(value: object) -> bytes:
    return json.dumps(value).encode()


OPS_LOGIN = "Basic b3BzOm9wcy1zZWNyZXQ="  # ops:ops-secret, OPS_BASIC_AUTH of the corpus's server
METRICS_TOKEN = "metrics-secret"

ROUTES = [
    Route("GET", "/v1/music/generations", rule="/v1/music/generations"),
    Route("POST", "/v1/music/generations", js(GOOD), "{BROKE}", "/v1/music/generations"),
    Route("GET", "/v1/music/generations/{JOB}", rule="/v1/music/generations/<job_id>"),
    Route(
        "POST", "/v1/music/generations/{JOB}/cancel", rule="/v1/music/generations/<job_id>/cancel"
    ),
    Route(
        "GET", "/v1/music/generations/{JOB}/content", rule="/v1/music/generations/<job_id>/content"
    ),
    Route(
        "GET",
        "/v1/music/generations/{JOB}/deliveries",
        rule="/v1/music/generations/<job_id>/deliveries",
    ),
    Route(
        "POST",
        "/v1/music/generations/{JOB}/deliveries/dlv_0/redeliver",
        rule="/v1/music/generations/<job_id>/deliveries/<delivery_id>/redeliver",
    ),
    Route("GET", "/v1/files/audio/Imx1aWQi.Z0J9ww.Xr8b5k", rule="/v1/files/audio/<token>"),
    Route("GET", "/v1/files/preview/Imx1aWQi.Z0J9ww.Xr8b5k", rule="/v1/files/preview/<token>"),
    # The event streams, opened at a malformed position: a stream that opened would follow
    # the corpus's job, which never ends (no worker runs), so each case ends at its answer.
    Route(
        "GET",
        "/v1/music/generations/{JOB}/events?last_event_id=x",
        rule="/v1/music/generations/<job_id>/events",
    ),
    Route("GET", "/v1/events?last_event_id=x", rule="/v1/events"),
    Route("GET", "/v1/models", rule="/v1/models"),
    Route("GET", "/v1/models/minimax/music-1.5", rule="/v1/models/<path:model_id>"),
    # An org that cannot pay: refused before any upstream call.
    Route(
        "POST",
        "/v1/lyrics/generations",
        js({"model": "lyrics-2.6", "prompt": "A summer road trip"}),
        "{BROKE}",
        "/v1/lyrics/generations",
    ),
    Route("GET", "/v1/balance", rule="/v1/balance"),
    Route("GET", "/v1/usage", rule="/v1/usage"),
    Route("GET", "/v2/generate/audio?generation_id={JOB}", rule="/v2/generate/audio"),
    Route("POST", "/v2/generate/audio", js(GOOD_V2), "{BROKE}", "/v2/generate/audio"),
    Route("GET", "/v1/webhooks/endpoint", rule="/v1/webhooks/endpoint"),
    Route(
        "PUT",
        "/v1/webhooks/endpoint",
        js({"url": "https://93.184.215.14/hook"}),
        rule="/v1/webhooks/endpoint",
    ),
    Route("DELETE", "/v1/webhooks/endpoint", rule="/v1/webhooks/endpoint"),
    Route("GET", "/v1/webhooks/secret", rule="/v1/webhooks/secret"),
    Route("POST", "/v1/webhooks/secret/rotate", rule="/v1/webhooks/secret/rotate"),
    Route("GET", "/healthz", rule="/healthz"),
    # The operators' console and /metrics, where the app has them: OPS_BASIC_AUTH and
    # METRICS_TOKEN are set for the corpus's server (without them both are plain 404s).
    *(
        Route(method, path, key=OPS_LOGIN, rule=rule, any_body=True)
        for method, path, rule in (
            ("GET", "/ops/", "/ops/"),
            ("GET", "/ops/static/console.css", "/ops/static/<path:filename>"),
            ("GET", "/ops/accounts", "/ops/accounts"),
            ("POST", "/ops/accounts/sim-aimlapi/disable", "/ops/accounts/<account_id>/<action>"),
            ("GET", "/ops/failures", "/ops/failures"),
            ("GET", "/ops/tenants", "/ops/tenants"),
            ("GET", "/ops/jobs", "/ops/jobs"),
            ("GET", "/ops/jobs/{JOB}", "/ops/jobs/<job_id>"),
        )
    ),
    Route("GET", "/metrics", key=METRICS_TOKEN, rule="/metrics", any_body=True),
    Route("GET", "/openapi.json", rule="/openapi.json"),
    Route("GET", "/docs", rule="/docs"),
    Route("GET", "/static/swagger-ui/swagger-ui.css", rule="/static/<path:filename>"),
]

# ------------------------------------------------------------------ headers, on every route

LONG_KEY = "chs_" + "k" * 8000
HEADER_FAMILIES: list[tuple[str, str | None, tuple[Header, ...]]] = [
    # (name, key to send or None, extra headers)
    ("no-auth", None, ()),
    ("bearer-alone", None, (("Authorization", b"Bearer"),)),
    ("bearer-space", None, (("Authorization", b"Bearer   "),)),
    ("bearer-lowercase", None, (("Authorization", b"bearer {KEY}"),)),
    ("basic-scheme", None, (("Authorization", b"Basic dXNlcjpwYXNz"),)),
    ("two-keys-one-header", None, (("Authorization", b"Bearer {KEY}, Bearer chs_x"),)),
    (
        "duplicate-auth-good-first",
        None,
        (("Authorization", b"Bearer {KEY}"), ("Authorization", b"Bearer chs_nope")),
    ),
    (
        "duplicate-auth-bad-first",
        None,
        (("Authorization", b"Bearer chs_nope"), ("Authorization", b"Bearer {KEY}")),
    ),
    ("huge-key", None, (("Authorization", f"Bearer {LONG_KEY}".encode()),)),
    ("latin1-key", None, (("Authorization", b"Bearer chs_\xe9\xff"),)),
    ("utf8-key", None, (("Authorization", "Bearer chs_🎵".encode()),)),
    ("key-then-junk", None, (("Authorization", b"Bearer {KEY} trailing"),)),
    ("idem-empty", "{KEY}", (("Idempotency-Key", b""),)),
    ("idem-long", "{KEY}", (("Idempotency-Key", b"i" * 4000),)),
    ("idem-latin1", "{KEY}", (("Idempotency-Key", b"\xe9t\xe9"),)),
    ("idem-tab", "{KEY}", (("Idempotency-Key", b"a\tb"),)),
    ("idem-twice", "{KEY}", (("Idempotency-Key", b"one"), ("Idempotency-Key", b"two"))),
    ("prefer-wait-empty", "{KEY}", (("Prefer", b"wait="),)),
    ("prefer-wait-negative", "{KEY}", (("Prefer", b"wait=-1"),)),
    ("prefer-wait-4300-digits", "{KEY}", (("Prefer", b"wait=" + b"9" * 5000),)),
    ("prefer-wait-float", "{KEY}", (("Prefer", b"wait=1e999"),)),
    ("prefer-wait-quoted", "{KEY}", (("Prefer", b'wait="5", respond-async'),)),
    ("prefer-garbage", "{KEY}", (("Prefer", b";;,,=;wait;=,"),)),
    ("prefer-latin1", "{KEY}", (("Prefer", b"wait=\xb9"),)),
    ("accept-html", "{KEY}", (("Accept", b"text/html"),)),
    ("accept-none", "{KEY}", (("Accept", b"application/xml;q=0, */*;q=0"),)),
    ("accept-garbage", "{KEY}", (("Accept", b";;;q=abc,/,*/*;q=1e999"),)),
    ("accept-encoding-garbage", "{KEY}", (("Accept-Encoding", b"br;q=2, gzip;q=-1, *;q=x"),)),
    ("content-type-on-get", "{KEY}", (("Content-Type", b"application/json; charset=utf-16"),)),
    ("range-garbage", "{KEY}", (("Range", b"bytes=abc-, 5-1, -0"),)),
    ("range-huge", "{KEY}", (("Range", b"bytes=0-" + b"9" * 5000),)),
    (
        "range-many",
        "{KEY}",
        (("Range", b"bytes=" + b",".join(b"%d-%d" % (i, i) for i in range(500))),),
    ),
    ("if-modified-garbage", "{KEY}", (("If-Modified-Since", b"Tue, 99 Foo 99999 99:99:99"),)),
    ("if-none-match-garbage", "{KEY}", (("If-None-Match", b'W/"' + b"x" * 3000),)),
    ("cookie-garbage", "{KEY}", (("Cookie", b"session=" + b"\xff" * 100 + b"; ; =;"),)),
    ("forwarded-garbage", "{KEY}", (("X-Forwarded-For", b"999.999.1.1, [::1, \xff"),)),
    ("many-headers", "{KEY}", tuple((f"X-Junk-{i}", b"x") for i in range(90))),
    ("long-header", "{KEY}", (("X-Junk", b"x" * 7000),)),
    ("host-port-garbage", "{KEY}", (("X-Original-Host", b"a:b:c"),)),
]

# ------------------------------------------------------------------ query strings, on every GET

# A request line over the web server's limit (4 KB for gunicorn) is its to refuse: the long
# ones come twice, under the limit (Chorus answers) and over it (either may).
QUERY_FAMILIES: list[tuple[str, bytes]] = [
    ("pct-zz", b"%zz"),
    ("pct-nul", b"x=%00"),
    ("pct-ff", b"x=%ff%fe"),
    ("pct-surrogate", b"x=%ed%a0%80"),
    ("pct-overlong", b"x=%c0%af"),
    ("limit-negative", b"limit=-1"),
    ("limit-googol", b"limit=1" + b"0" * 100),
    ("limit-3000-digits", b"limit=" + b"7" * 3000),
    ("limit-float", b"limit=1e999"),
    ("limit-nan", b"limit=NaN"),
    ("limit-repeated", b"limit=1&limit=2&limit=x"),
    ("after-garbage", b"after=garbage"),
    ("after-nul", b"after=luid_%00"),
    ("after-long", b"after=" + b"a" * 3000),
    ("status-nul", b"status=%00"),
    ("usage-dates", b"from=2024-99-99&to=0000-00-00"),
    ("usage-reversed", b"from=2030-01-01&to=1970-01-01"),
    ("usage-huge-year", b"from=99999999-01-01"),
    ("generation-id-nul", b"generation_id=%00"),
    ("generation-id-long", b"generation_id=" + b"g" * 3000),
    ("generation-id-repeated", b"generation_id=a&generation_id=b"),
    ("brackets", b"a[b][c]=1&a[]=2"),
    ("empty-pairs", b"&&=&=="),
    ("percent-run", b"x=" + b"%" * 200),
    ("plus-and-spaces", b"x=+++%20%20"),
]

LONG_QUERIES: list[tuple[str, bytes]] = [
    ("limit-4300-digits", b"limit=" + b"7" * 4400),
    ("after-8k", b"after=" + b"a" * 8000),
]

# ------------------------------------------------------------------ bodies, on routes that read one


def nested(depth: int, inner: bytes = b"1") -> bytes:
    return b"[" * depth + inner + b"]" * depth


def nested_object(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


def with_field(base: dict[str, object], name: str, raw: bytes) -> bytes:
    """``base`` as JSON, with field ``name`` set to the raw JSON text ``raw``."""
    text = js({**base, name: "__RAW__"})
    return text.replace(b'"__RAW__"', raw)


MAX_BODY = 1024 * 1024
DIGITS = b"1" * 4400

BODY_FAMILIES: list[tuple[str, bytes, bytes | None]] = [
    # (name, body, content type: None sends none)
    ("deep-array-10k", nested(10_001), b"application/json"),
    ("deep-array-400k", nested(400_000), b"application/json"),
    ("deep-object-10k", nested_object(10_001), b"application/json"),
    ("deep-unclosed", b"[" * 100_000, b"application/json"),
    ("deep-in-prompt", with_field(GOOD, "prompt", nested(20_000)), b"application/json"),
    ("deep-in-metadata", with_field(GOOD, "metadata", nested_object(20_000)), b"application/json"),
    (
        "deep-in-audio-setting",
        with_field(GOOD, "audio_setting", nested(20_000)),
        b"application/json",
    ),
    ("deep-in-url", with_field({}, "url", nested(20_000)), b"application/json"),
    ("huge-int", b'{"model": ' + DIGITS + b"}", b"application/json"),
    (
        "huge-int-nested",
        with_field(GOOD, "audio_setting", b'{"sample_rate": ' + DIGITS + b"}"),
        b"application/json",
    ),
    ("huge-negative-int", with_field(GOOD, "prompt", b"-" + DIGITS), b"application/json"),
    ("huge-float", with_field(GOOD, "audio_setting", b'{"bitrate": 1e999}'), b"application/json"),
    ("tiny-float", with_field(GOOD, "audio_setting", b'{"bitrate": 1e-999}'), b"application/json"),
    (
        "huge-fraction",
        with_field(GOOD, "audio_setting", b'{"bitrate": 0.' + DIGITS + b"}"),
        b"application/json",
    ),
    (
        "negative-zero",
        with_field(GOOD, "audio_setting", b'{"sample_rate": -0}'),
        b"application/json",
    ),
    (
        "negative-zero-float",
        with_field(GOOD, "audio_setting", b'{"sample_rate": -0.0}'),
        b"application/json",
    ),
    ("nan", with_field(GOOD, "audio_setting", b'{"sample_rate": NaN}'), b"application/json"),
    ("infinity", with_field(GOOD, "audio_setting", b'{"bitrate": Infinity}'), b"application/json"),
    ("minus-infinity", with_field(GOOD, "prompt", b"-Infinity"), b"application/json"),
    ("nan-as-url", b'{"url": NaN}', b"application/json"),
    ("huge-string", with_field(GOOD, "prompt", js("p" * 900_000)), b"application/json"),
    ("huge-emoji", with_field(GOOD, "lyrics", js("🎵" * 200_000)), b"application/json"),
    (
        "huge-escapes",
        with_field(GOOD, "prompt", b'"' + b"\\u00e9" * 170_000 + b'"'),
        b"application/json",
    ),
    ("huge-field-name", with_field(GOOD, "k" * 500_000, b"1"), b"application/json"),
    ("many-keys", js({f"k{i}": i for i in range(40_000)}), b"application/json"),
    (
        "many-metadata",
        with_field(GOOD, "metadata", js({f"k{i}": "v" for i in range(30_000)})),
        b"application/json",
    ),
    ("over-max-length", b'{"prompt": "' + b"x" * MAX_BODY + b'"}', b"application/json"),
    ("empty", b"", b"application/json"),
    ("whitespace", b" \r\n\t ", b"application/json"),
    ("null", b"null", b"application/json"),
    ("array", b"[]", b"application/json"),
    ("string", b'"hello"', b"application/json"),
    ("number", b"12", b"application/json"),
    ("trailing-garbage", js(GOOD) + b"}}}", b"application/json"),
    ("two-documents", js(GOOD) + js(GOOD), b"application/json"),
    (
        "duplicate-keys",
        b'{"model": "a", "model": "music-2.6", "url": 1, "url": "x"}',
        b"application/json",
    ),
    ("escaped-nul-prompt", with_field(GOOD, "prompt", b'"a\\u0000b"'), b"application/json"),
    ("escaped-nul-key", with_field(GOOD, "metadata", b'{"a\\u0000": "b"}'), b"application/json"),
    ("escaped-nul-url", b'{"url": "https://93.184.215.14/\\u0000"}', b"application/json"),
    ("escaped-nul-model", with_field(GOOD, "model", b'"\\u0000"'), b"application/json"),
    ("raw-nul-in-string", with_field(GOOD, "prompt", b'"a\x00b"'), b"application/json"),
    ("raw-nul-between", js(GOOD)[:-1] + b"\x00}", b"application/json"),
    ("lone-surrogate-escaped", with_field(GOOD, "prompt", b'"\\ud800"'), b"application/json"),
    ("lone-low-surrogate", with_field(GOOD, "lyrics", b'"\\udfff x"'), b"application/json"),
    ("lone-surrogate-url", b'{"url": "https://93.184.215.14/\\ud800"}', b"application/json"),
    ("surrogate-key", with_field(GOOD, "metadata", b'{"\\ud800": "v"}'), b"application/json"),
    ("surrogate-utf8-bytes", with_field(GOOD, "prompt", b'"\xed\xa0\x80"'), b"application/json"),
    ("overlong-utf8", with_field(GOOD, "prompt", b'"\xc0\xaf\xe0\x80\xaf"'), b"application/json"),
    ("latin1-body", with_field(GOOD, "prompt", b'"caf\xe9"'), b"application/json"),
    (
        "latin1-declared",
        with_field(GOOD, "prompt", b'"caf\xe9"'),
        b"application/json; charset=latin-1",
    ),
    ("utf16-bom", b"\xff\xfe" + json.dumps(GOOD).encode("utf-16-le"), b"application/json"),
    ("utf16-no-bom", json.dumps(GOOD).encode("utf-16-be"), b"application/json"),
    ("utf16-declared", json.dumps(GOOD).encode("utf-16"), b"application/json; charset=utf-16"),
    ("utf32", json.dumps(GOOD).encode("utf-32"), b"application/json"),
    ("utf8-bom", b"\xef\xbb\xbf" + js(GOOD), b"application/json"),
    ("charset-bogus", js(GOOD), b"application/json; charset=no-such-encoding"),
    ("charset-empty", js(GOOD), b'application/json; charset=""'),
    ("charset-twice", js(GOOD), b"application/json; charset=utf-8; charset=ascii"),
    ("charset-garbage", js(GOOD), b"application/json; charset=\xff\xfe; ;;="),
    ("no-content-type", js(GOOD), None),
    ("text-plain", js(GOOD), b"text/plain"),
    ("form", b"model=music-2.6&prompt=x&%zz=%ff", b"application/x-www-form-urlencoded"),
    ("multipart-no-boundary", b"--x\r\n\r\n", b"multipart/form-data"),
    (
        "multipart-garbage",
        b"--b\r\nContent-Disposition: form-data\r\n\r\n\xff\r\n",
        b"multipart/form-data; boundary=b",
    ),
    ("json-suffix-type", js(GOOD), b"application/vnd.chorus+json"),
    ("wildcard-type", js(GOOD), b"*/*"),
    ("type-garbage", js(GOOD), b";;;/;"),
    ("binary", bytes(range(256)) * 8, b"application/octet-stream"),
    ("binary-as-json", bytes(range(256)) * 8, b"application/json"),
    (
        "wrong-types",
        js({"model": 1, "catelogid": [], "prompt": {}, "lyrics": True, "url": 5, "events": "x"}),
        b"application/json",
    ),
    (
        "unknown-fields",
        js({**GOOD, "temperature": 2, "url": "https://93.184.215.14/", "zz": None}),
        b"application/json",
    ),
    (
        "bad-urls",
        js(
            {
                **GOOD,
                "callback_url": "http://[::1",
                "reference_audio_url": "http://%zz/",
                "url": "http://[fd00:ec2::254]/",
            }
        ),
        b"application/json",
    ),
]

# ------------------------------------------------------------------ path ids, on routes that take one

ID_FAMILIES: list[tuple[str, bytes]] = [
    ("id-nul", b"luid_%00"),
    ("id-only-nul", b"%00"),
    ("id-pct-ff", b"%ff%fe"),
    ("id-pct-zz", b"%zz"),
    ("id-surrogate", b"%ed%a0%80"),
    ("id-long", b"luid_" + b"z" * 1900),
    ("id-dots", b"..%2f..%2fetc%2fpasswd"),
    ("id-unicode", "luid_🎵".encode().replace(b"\xf0\x9f\x8e\xb5", b"%F0%9F%8E%B5")),
    ("id-sql", b"'%20OR%201=1--"),
    ("id-space", b"luid_%20"),
    ("id-newline", b"luid_%0d%0aX-Injected:%201"),
]
ID_ROUTES = [
    ("GET", "/v1/music/generations/{ID}"),
    ("POST", "/v1/music/generations/{ID}/cancel"),
    ("GET", "/v1/music/generations/{ID}/content"),
    ("GET", "/v1/music/generations/{ID}/deliveries"),
    ("POST", "/v1/music/generations/{ID}/deliveries/{ID}/redeliver"),
    ("POST", "/v1/music/generations/{JOB}/deliveries/{ID}/redeliver"),
    ("GET", "/v1/files/audio/{ID}"),
    ("GET", "/v1/files/preview/{ID}"),
    ("GET", "/v1/music/generations/{ID}/events"),
    ("GET", "/v2/generate/audio?generation_id={ID}"),
    ("GET", "/v1/models/{ID}"),
]

# ------------------------------------------------------------------ transport: raw HTTP

SUBMIT = (
    b"POST /v1/music/generations HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {BROKE}\r\n"
)
JSON_TYPE = b"Content-Type: application/json\r\n"
CLOSE = b"Connection: close\r\n"
BODY = js(GOOD)


def chunked(*chunks: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks)


def submit_raw(headers: bytes, body: bytes) -> bytes:
    return SUBMIT + JSON_TYPE + CLOSE + headers + b"\r\n" + body


TE = b"Transfer-Encoding: chunked\r\n"
TRANSPORT: list[Case] = [
    # Chunked bodies: the web server de-chunks as the app reads.
    Case("chunked-valid", raw=submit_raw(TE, chunked(BODY[:10], BODY[10:]) + b"0\r\n\r\n")),
    Case(
        "chunked-extensions",
        raw=submit_raw(TE, b"%x;name=value;x\r\n%s\r\n0;end\r\n\r\n" % (len(BODY), BODY)),
    ),
    Case("chunked-trailers", raw=submit_raw(TE, chunked(BODY) + b"0\r\nX-Trailer: 1\r\n\r\n")),
    Case(
        "chunked-huge-extension",
        raw=submit_raw(TE, b"%x;%s\r\n%s\r\n0\r\n\r\n" % (len(BODY), b"e" * 20_000, BODY)),
        transport=True,
    ),
    Case(
        "chunk-size-garbage",
        raw=submit_raw(TE, b"zz\r\n" + BODY + b"\r\n0\r\n\r\n"),
        transport=True,
    ),
    Case("chunk-size-negative", raw=submit_raw(TE, b"-5\r\nhello\r\n0\r\n\r\n"), transport=True),
    Case("chunk-size-0x", raw=submit_raw(TE, b"0x5\r\nhello\r\n0\r\n\r\n"), transport=True),
    Case("chunk-size-spaces", raw=submit_raw(TE, b" 5 \r\nhello\r\n0\r\n\r\n"), transport=True),
    Case(
        "chunk-size-huge",
        raw=submit_raw(TE, b"f" * 40 + b"\r\nhello\r\n0\r\n\r\n"),
        half_close=True,
        transport=True,
    ),
    Case(
        "chunk-size-over-max",
        raw=submit_raw(TE, b"%x\r\n" % (MAX_BODY * 4) + b"x" * 1000),
        half_close=True,
        transport=True,
    ),
    Case(
        "chunk-longer-than-data-then-close",
        raw=submit_raw(TE, b"400\r\n" + BODY),
        half_close=True,
        transport=True,
    ),
    Case(
        "chunk-missing-final-then-close",
        raw=submit_raw(TE, chunked(BODY)),
        half_close=True,
        transport=True,
    ),
    Case(
        "chunk-missing-crlf",
        raw=submit_raw(TE, b"%x\r\n%sXX0\r\n\r\n" % (len(BODY), BODY)),
        transport=True,
    ),
    Case(
        "chunk-lf-only",
        raw=submit_raw(TE, b"%x\n%s\n0\n\n" % (len(BODY), BODY)),
        half_close=True,
        transport=True,
    ),
    Case(
        "chunked-over-max",
        raw=submit_raw(TE, chunked(*[b"x" * 65536] * 20) + b"0\r\n\r\n"),
        transport=True,
    ),
    Case(
        "chunked-deep-nesting",
        raw=submit_raw(TE, chunked(nested(50_000)) + b"0\r\n\r\n"),
    ),
    Case(
        "chunked-and-content-length",
        raw=submit_raw(TE + b"Content-Length: 5\r\n", chunked(BODY) + b"0\r\n\r\n"),
        transport=True,
    ),
    Case(
        "content-length-then-chunked",
        raw=submit_raw(b"Content-Length: %d\r\n" % len(BODY) + TE, chunked(BODY) + b"0\r\n\r\n"),
        transport=True,
    ),
    Case(
        "te-gzip-chunked",
        raw=submit_raw(b"Transfer-Encoding: gzip, chunked\r\n", chunked(BODY) + b"0\r\n\r\n"),
        transport=True,
    ),
    Case(
        "te-chunked-twice",
        raw=submit_raw(b"Transfer-Encoding: chunked, chunked\r\n", chunked(BODY) + b"0\r\n\r\n"),
        transport=True,
    ),
    Case(
        "te-identity",
        raw=submit_raw(b"Transfer-Encoding: identity\r\nContent-Length: %d\r\n" % len(BODY), BODY),
        transport=True,
    ),
    Case(
        "te-garbage",
        raw=submit_raw(b"Transfer-Encoding: xchunked\r\n", BODY),
        half_close=True,
        transport=True,
        not_implemented=True,
    ),
    Case(
        "te-two-headers",
        raw=submit_raw(TE + b"Transfer-Encoding: identity\r\n", chunked(BODY) + b"0\r\n\r\n"),
        transport=True,
    ),
    Case(
        "te-on-http10",
        raw=b"POST /v1/music/generations HTTP/1.0\r\nAuthorization: Bearer {BROKE}\r\n"
        + JSON_TYPE
        + TE
        + b"\r\n"
        + chunked(BODY)
        + b"0\r\n\r\n",
        half_close=True,
        transport=True,
    ),
    # Content-Length
    Case(
        "content-length-negative",
        raw=submit_raw(b"Content-Length: -1\r\n", BODY),
        half_close=True,
        transport=True,
    ),
    Case(
        "content-length-huge",
        raw=submit_raw(b"Content-Length: " + b"9" * 30 + b"\r\n", BODY),
        half_close=True,
        transport=True,
    ),
    Case(
        "content-length-4300-digits",
        raw=submit_raw(b"Content-Length: " + b"9" * 5000 + b"\r\n", BODY),
        half_close=True,
        transport=True,
    ),
    Case(
        "content-length-garbage",
        raw=submit_raw(b"Content-Length: abc\r\n", BODY),
        half_close=True,
        transport=True,
    ),
    Case(
        "content-length-plus",
        raw=submit_raw(b"Content-Length: +%d\r\n" % len(BODY), BODY),
        half_close=True,
        transport=True,
    ),
    Case(
        "content-length-twice-different",
        raw=submit_raw(b"Content-Length: 5\r\nContent-Length: %d\r\n" % len(BODY), BODY),
        half_close=True,
        transport=True,
    ),
    Case(
        "content-length-list",
        raw=submit_raw(b"Content-Length: %d, %d\r\n" % (len(BODY), len(BODY)), BODY),
        half_close=True,
        transport=True,
    ),
    Case(
        "content-length-over-body-then-close",
        raw=submit_raw(b"Content-Length: %d\r\n" % (len(BODY) + 500), BODY),
        half_close=True,
        transport=True,
    ),
    Case(
        "content-length-over-max",
        raw=submit_raw(b"Content-Length: %d\r\n" % (MAX_BODY + 1), b"x" * 1000),
        half_close=True,
    ),
    Case(
        "content-length-under-body",
        raw=submit_raw(b"Content-Length: 10\r\n", BODY),
    ),
    Case("content-length-zero-with-body", raw=submit_raw(b"Content-Length: 0\r\n", BODY)),
    Case(
        "expect-100-continue",
        raw=submit_raw(b"Expect: 100-continue\r\nContent-Length: %d\r\n" % len(BODY), BODY),
    ),
    Case(
        "expect-garbage",
        raw=submit_raw(b"Expect: 42-nonsense\r\nContent-Length: %d\r\n" % len(BODY), BODY),
        transport=True,
    ),
    # The console's forms: its token is read from the form, through the form parser.
    Case(
        "console-form-chunk-size-garbage",
        raw=b"POST /ops/accounts/sim-aimlapi/disable HTTP/1.1\r\nHost: x\r\n"
        b"Authorization: " + OPS_LOGIN.encode() + b"\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n" + CLOSE + TE + b"\r\n"
        b"zz\r\ncsrf_token=x\r\n0\r\n\r\n",
        transport=True,
        any_body=True,
    ),
    Case(
        "console-form-chunk-cut-short",
        raw=b"POST /ops/accounts/sim-aimlapi/disable HTTP/1.1\r\nHost: x\r\n"
        b"Authorization: " + OPS_LOGIN.encode() + b"\r\n"
        b"Content-Type: multipart/form-data; boundary=b\r\n" + CLOSE + TE + b"\r\n"
        b"400\r\n--b\r\nContent-Disposition: form-data; name=csrf_token\r\n\r\nx",
        half_close=True,
        transport=True,
        any_body=True,
    ),
    # The request line and the header block
    Case("request-line-method-only", raw=b"GET\r\n\r\n", transport=True),
    Case(
        "request-line-bad-version",
        raw=b"GET /v1/models HTTP/9.9\r\nHost: x\r\n\r\n",
        transport=True,
    ),
    Case("request-line-http09", raw=b"GET /v1/models\r\n\r\n", transport=True),
    Case("request-line-http10-no-host", raw=b"GET /healthz HTTP/1.0\r\n\r\n"),
    Case(
        "request-line-lowercase-method",
        raw=b"get /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        transport=True,
    ),
    Case(
        "request-line-unknown-method",
        raw=b"BREW /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        transport=True,
    ),
    Case(
        "request-line-nul",
        raw=b"GET /v1/mod\x00els HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        transport=True,
    ),
    Case(
        "request-line-raw-ff",
        raw=b"GET /v1/music/generations/\xff\xfe HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nConnection: close\r\n\r\n",
        transport=True,
    ),
    Case(
        "request-line-raw-utf8",
        raw="GET /v1/music/generations/luid_é HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nConnection: close\r\n\r\n".encode(),
        transport=True,
    ),
    Case(
        "request-line-space-in-path",
        raw=b"GET /v1/mo dels HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        transport=True,
    ),
    Case(
        "request-line-absolute-form",
        raw=b"GET http://evil.example/v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nConnection: close\r\n\r\n",
        transport=True,
    ),
    Case(
        "request-line-asterisk",
        raw=b"OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        transport=True,
    ),
    Case(
        "request-line-connect",
        raw=b"CONNECT 127.0.0.1:5432 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        transport=True,
    ),
    Case(
        "request-line-url-10k",
        raw=b"GET /v1/models?"
        + b"a" * 10_000
        + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        transport=True,
    ),
    Case(
        "request-line-url-100k",
        raw=b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        transport=True,
    ),
    Case(
        "header-no-colon",
        raw=b"GET /healthz HTTP/1.1\r\nHost: x\r\nNoColonHere\r\nConnection: close\r\n\r\n",
        transport=True,
    ),
    Case(
        "header-space-in-name",
        raw=b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Name: 1\r\nConnection: close\r\n\r\n",
        transport=True,
    ),
    Case(
        "header-space-before-colon",
        raw=b"GET /v1/balance HTTP/1.1\r\nHost: x\r\nAuthorization : Bearer {KEY}\r\nConnection: close\r\n\r\n",
        transport=True,
    ),
    Case(
        "header-obs-fold",
        raw=b"GET /v1/balance HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer\r\n {KEY}\r\nConnection: close\r\n\r\n",
        transport=True,
    ),
    Case(
        "header-nul-value",
        raw=b"GET /v1/balance HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\x00\r\nConnection: close\r\n\r\n",
        transport=True,
    ),
    Case(
        "header-nul-idempotency",
        raw=submit_raw(b"Idempotency-Key: a\x00b\r\nContent-Length: %d\r\n" % len(BODY), BODY),
        transport=True,
    ),
    Case(
        "header-nul-name",
        raw=b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-\x00: 1\r\nConnection: close\r\n\r\n",
        transport=True,
    ),
    Case(
        "header-cr-in-value",
        raw=b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\nConnection: close\r\n\r\n",
        transport=True,
    ),
    Case(
        "header-lf-only",
        raw=b"GET /healthz HTTP/1.1\nHost: x\nConnection: close\n\n",
        transport=True,
    ),
    Case(
        "header-1000",
        raw=b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
        + b"".join(b"X-%d: 1\r\n" % i for i in range(1000))
        + b"Connection: close\r\n\r\n",
        transport=True,
    ),
    Case(
        "header-value-64k",
        raw=b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: "
        + b"v" * 65_536
        + b"\r\nConnection: close\r\n\r\n",
        transport=True,
    ),
    Case(
        "header-block-1mb",
        raw=b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
        + b"X-A: "
        + b"v" * 8000
        + b"\r\n" * 1
        + (b"X-B: " + b"v" * 8000 + b"\r\n") * 130
        + b"\r\n",
        transport=True,
    ),
    Case(
        "host-empty",
        raw=b"GET /v1/balance HTTP/1.1\r\nHost:\r\nAuthorization: Bearer {KEY}\r\nConnection: close\r\n\r\n",
        transport=True,
    ),
    Case(
        "host-missing-http11",
        raw=b"GET /v1/balance HTTP/1.1\r\nAuthorization: Bearer {KEY}\r\nConnection: close\r\n\r\n",
        transport=True,
    ),
    Case(
        "host-twice",
        raw=b"GET /v1/balance HTTP/1.1\r\nHost: a\r\nHost: b\r\nAuthorization: Bearer {KEY}\r\nConnection: close\r\n\r\n",
        transport=True,
    ),
    Case(
        "host-bad-bracket",
        raw=b"GET /v1/balance HTTP/1.1\r\nHost: [::1\r\nAuthorization: Bearer {KEY}\r\nConnection: close\r\n\r\n",
        transport=True,
    ),
    Case(
        "host-port-garbage",
        raw=b"GET /v1/balance HTTP/1.1\r\nHost: a:b:c:99999999999\r\nAuthorization: Bearer {KEY}\r\nConnection: close\r\n\r\n",
        transport=True,
    ),
    Case(
        "host-latin1",
        raw=b"GET /v1/balance HTTP/1.1\r\nHost: \xe9\xff\r\nAuthorization: Bearer {KEY}\r\nConnection: close\r\n\r\n",
        transport=True,
    ),
    Case(
        "host-long",
        raw=b"GET /v1/balance HTTP/1.1\r\nHost: "
        + b"h" * 7000
        + b"\r\nAuthorization: Bearer {KEY}\r\nConnection: close\r\n\r\n",
        transport=True,
    ),
    Case(
        "host-with-path",
        raw=b"GET /v1/balance HTTP/1.1\r\nHost: a/b?c#d@e\r\nAuthorization: Bearer {KEY}\r\nConnection: close\r\n\r\n",
        transport=True,
    ),
    Case(
        "host-in-post-links",
        raw=submit_raw(b"Host: evil.example:1\r\nContent-Length: %d\r\n" % len(BODY), BODY),
        transport=True,
    ),
    Case(
        "upgrade-h2c",
        raw=b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
        transport=True,
    ),
    Case(
        "upgrade-websocket",
        raw=b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: x\r\n\r\n",
        transport=True,
    ),
    Case("http2-preface", raw=b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", transport=True),
    Case(
        "tls-hello",
        raw=bytes.fromhex("16030100a5010000a10303") + b"\x00" * 64,
        half_close=True,
        transport=True,
        may_drop=True,
    ),
    Case(
        "pipelined-garbage",
        raw=b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n\x00\x01\x02 junk\r\n\r\n",
        half_close=True,
        transport=True,
    ),
    # Connections that break: nobody is left to answer, and the server must not mind.
    Case(
        "broken-in-headers",
        raw=b"POST /v1/music/generations HTTP/1.1\r\nHost: x\r\nAuthori",
        abort=True,
        transport=True,
    ),
    Case(
        "broken-in-body",
        raw=submit_raw(b"Content-Length: %d\r\n" % len(BODY), BODY[:20]),
        abort=True,
        transport=True,
    ),
    Case(
        "broken-in-chunk",
        raw=submit_raw(TE, b"%x\r\n%s" % (len(BODY), BODY[:20])),
        abort=True,
        transport=True,
    ),
    Case(
        "broken-after-request-line", raw=b"GET /v1/balance HTTP/1.1\r\n", abort=True, transport=True
    ),
    Case(
        "half-closed-in-headers",
        raw=b"GET /v1/balance HTTP/1.1\r\nHost: x\r\nAuth",
        half_close=True,
        transport=True,
        may_drop=True,
    ),
    Case("half-closed-empty", raw=b"", half_close=True, abort=True, transport=True),
    Case(
        "slow-then-broken-in-headers",
        raw=b"GET /v1/balance HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n",
        pace=0.1,
        abort=True,
        transport=True,
    ),
    Case(
        "slow-then-broken-in-body",
        raw=submit_raw(b"Content-Length: %d\r\n" % len(BODY), BODY[:30]),
        pace=0.1,
        abort=True,
        transport=True,
    ),
    Case(
        "slow-chunks-then-broken",
        raw=submit_raw(TE, chunked(BODY[:10], BODY[10:20])),
        pace=0.1,
        abort=True,
        transport=True,
    ),
    Case(
        "slow-chunks-then-half-closed",
        raw=submit_raw(TE, chunked(BODY[:10], BODY[10:20])),
        pace=0.1,
        half_close=True,
        transport=True,
    ),
    Case(
        "slow-but-whole",
        raw=submit_raw(TE, chunked(BODY[:10], BODY[10:]) + b"0\r\n\r\n"),
        pace=0.1,
    ),
]

# ------------------------------------------------------------------ methods

ODD_METHODS = ("PATCH", "TRACE", "PURGE", "DELETE", "PUT")
METHOD_CASES = [
    Case(f"method-{method.lower()} {target}", method=method, target=target.encode())
    for target in ("/v1/music/generations", "/v1/music/generations/{JOB}", "/v1/balance")
    for method in ODD_METHODS
]


# Routes whose input is richest get every family; the others the families most likely to
# find something there (the whole cross product would only repeat the same code paths).
EVERY_FAMILY = {
    "/v1/music/generations",
    "/v1/music/generations/{JOB}",
    "/v2/generate/audio",
    "/v2/generate/audio?generation_id={JOB}",
    "/v1/webhooks/endpoint",
    "/v1/usage",
}
SOME_HEADERS = {
    "no-auth",
    "bearer-alone",
    "duplicate-auth-bad-first",
    "huge-key",
    "latin1-key",
    "idem-latin1",
    "prefer-wait-4300-digits",
    "accept-garbage",
    "range-huge",
    "many-headers",
}
SOME_QUERIES = {"pct-zz", "pct-nul", "pct-ff", "limit-googol", "brackets"}
SOME_BODIES = {
    "deep-array-10k",
    "deep-object-10k",
    "huge-int",
    "nan",
    "over-max-length",
    "empty",
    "utf16-bom",
    "raw-nul-in-string",
    "lone-surrogate-escaped",
    "overlong-utf8",
    "binary-as-json",
    "form",
}


def _route_cases() -> list[Case]:
    cases: list[Case] = []
    for route in ROUTES:
        target = route.target.encode()
        where = f"{route.method} {route.target}"
        every = route.target in EVERY_FAMILY
        for name, key, headers in HEADER_FAMILIES:
            if not every and name not in SOME_HEADERS:
                continue
            # A route that must not queue anything gets its own key in every header.
            own = tuple((n, v.replace(b"{KEY}", route.key.encode())) for n, v in headers)
            cases.append(
                Case(
                    f"{where} {name}",
                    route.method,
                    target,
                    own,
                    route.body,
                    key if key is None else route.key,
                    any_body=route.any_body,
                )
            )
        if route.method == "GET":
            joiner = b"&" if b"?" in target else b"?"
            for name, query in QUERY_FAMILIES:
                if every or name in SOME_QUERIES:
                    cases.append(
                        Case(
                            f"{where} {name}",
                            "GET",
                            target + joiner + query,
                            key=route.key,
                            any_body=route.any_body,
                        )
                    )
            for name, query in LONG_QUERIES if every else []:
                cases.append(
                    Case(
                        f"{where} {name}",
                        "GET",
                        target + joiner + query,
                        key=route.key,
                        transport=True,
                    )
                )
        if route.body is not None or route.method == "POST":
            for name, body, content_type in BODY_FAMILIES:
                if every or name in SOME_BODIES:
                    cases.append(
                        Case(
                            f"{where} {name}",
                            route.method,
                            target,
                            body=body,
                            key=route.key,
                            content_type=content_type,
                            any_body=route.any_body,
                        )
                    )
    return cases


def _id_cases() -> list[Case]:
    return [
        Case(f"{method} {path} {name}", method, path.encode().replace(b"{ID}", raw_id))
        for method, path in ID_ROUTES
        for name, raw_id in ID_FAMILIES
    ]


# A valid submit by an org that can pay, with a Prefer it cannot honour: ignored (RFC 7240),
# answered at once with the job, never a 500 after the job was stored.
PREFER_ON_A_REAL_SUBMIT = [
    Case(
        f"real-submit prefer {value!r}",
        "POST",
        b"/v1/music/generations",
        (("Prefer", value),),
        js(GOOD),
    )
    for value in (b"wait=", b"wait=-1", b"wait=1e999", b"wait=abc", b"wait=\xb9", b"wait=0")
]

CASES: list[Case] = (
    _route_cases() + _id_cases() + TRANSPORT + METHOD_CASES + PREFER_ON_A_REAL_SUBMIT
)
