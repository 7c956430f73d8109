"""``POST /v1/lyrics/generations``: lyrics, a title and style tags, answered at once.

The upstream call is short and synchronous, so it runs on the request's thread, bounded by
LYRICS_TIMEOUT_SECONDS. Its price is held before the call and captured only with the lyrics
in hand (``app.jobs.lyrics``). With an ``Idempotency-Key`` the claim commits with the hold,
before the call, and the answer commits with the capture: a retry after any crash gets the
stored answer or runs afresh, and never pays twice.
"""

from __future__ import annotations

from typing import Any

from flask import Response, g, jsonify
from flask.views import MethodView
from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from app.api import idempotency
from app.api.auth import require_key
from app.api.errors import ApiError, openai_response
from app.api.jobs.schemas import MAX_TEXT, RequiredString, _no_nul
from app.api.openapi import ApiBlueprint, example
from app.api.schemas import OpenAIErrorSchema
from app.extensions import chorus
from app.jobs import lyrics
from app.jobs.errors import FALLBACK, MESSAGES

blp = ApiBlueprint(
    "lyrics",
    __name__,
    url_prefix="/v1/lyrics",
    description="Song lyrics written or edited by a lyrics model, answered at once.",
    bearer=True,
    rate_limited=True,
)
blp.before_request(require_key)

# Upstream failures: (status, headers). Anything not listed is a 502 under its own code.
FAILURES: dict[str, tuple[int, dict[str, str]]] = {
    "upstream_timeout": (504, {}),
    "upstream_unavailable": (503, {"Retry-After": "5"}),
    "upstream_rate_limited": (503, {"Retry-After": "5"}),
    # The input was refused by the upstream's moderation: the client's to change.
    "content_moderated": (400, {}),
}


def _text(description: str, example_: str) -> fields.String:
    return fields.String(
        load_default=None,
        validate=[validate.Length(max=MAX_TEXT), _no_nul],
        metadata={"description": description, "example": example_},
    )


class CreateLyricsSchema(Schema):
    class Meta:
        unknown = RAISE

    model = RequiredString("model", metadata={"example": "lyrics-2.6"})
    mode = fields.String(
        load_default="write_full_song",
        validate=validate.OneOf(lyrics.MODES),
        metadata={
            "description": "`write_full_song` writes new lyrics from the prompt; `edit` "
            "rewrites the given `lyrics` as the prompt asks."
        },
    )
    prompt = _text("The theme, mood or the change wanted.", "A summer road trip with friends")
    lyrics = _text("The lyrics to edit (required in `edit` mode).", "[Verse]\nOpen road")
    title = fields.String(
        load_default=None,
        validate=[validate.Length(max=200), _no_nul],
        metadata={"description": "A title to keep; otherwise the model proposes one."},
    )

    @validates_schema
    def _needs(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("mode") == "edit" and not (data.get("lyrics") or "").strip():
            raise ValidationError(
                "Missing required parameter: lyrics (edit mode needs the lyrics to edit)",
                field_name="lyrics",
            )
        if data.get("mode") == "write_full_song" and not (data.get("prompt") or "").strip():
            raise ValidationError("Missing required parameter: prompt", field_name="prompt")


class LyricsCostSchema(Schema):
    amount = fields.Integer(required=True, metadata={"description": "Charged, minor units."})
    currency = fields.String(required=True, metadata={"example": "CNY"})


class LyricsSchema(Schema):
    id = fields.String(required=True, metadata={"example": "lyr_01jd2x7k3m9q8r5t6v7w8x9y0z"})
    object = fields.String(required=True, metadata={"example": "lyrics.generation"})
    model = fields.String(required=True, metadata={"example": "lyrics-2.6"})
    created = fields.Integer(required=True, metadata={"description": "unix seconds"})
    title = fields.String(required=True, metadata={"example": "Open Road"})
    style_tags = fields.String(required=True, metadata={"example": "Pop, Upbeat"})
    lyrics = fields.String(required=True)
    cost = fields.Nested(LyricsCostSchema, required=True)


LYRICS_EXAMPLE = {
    "id": "lyr_01jd2x7k3m9q8r5t6v7w8x9y0z",
    "object": "lyrics.generation",
    "model": "lyrics-2.6",
    "created": 1764000000,
    "title": "Open Road",
    "style_tags": "Pop, Upbeat",
    "lyrics": "[Verse]\nWindows down, the open road\n[Chorus]\nWe sing along",
    "cost": {"amount": 10, "currency": "CNY"},
}


REQUEST_EXAMPLES = {
    "write": {
        "summary": "New lyrics from a theme",
        "value": {"model": "lyrics-2.6", "mode": "write_full_song", "prompt": "A summer road trip"},
    },
    "edit": {
        "summary": "Rewrite given lyrics",
        "value": {
            "model": "lyrics-2.6",
            "mode": "edit",
            "prompt": "Make the chorus more hopeful",
            "lyrics": "[Verse]\nOpen road\n[Chorus]\nNowhere to go",
        },
    },
}


def _failure(status: int, code: str) -> dict[str, Any]:
    return example(code, status, MESSAGES[code], code=code)["value"]


@blp.route("/generations")
class LyricsGenerations(MethodView):
    @idempotency.idempotent
    @blp.arguments(CreateLyricsSchema(), examples=REQUEST_EXAMPLES)
    @blp.response(200, LyricsSchema, description="The lyrics.", example=LYRICS_EXAMPLE)
    @blp.alt_response(
        400,
        schema=OpenAIErrorSchema,
        description="Invalid input, no such lyrics model, or input the upstream's moderation "
        "refused (`content_moderated`).",
        example=_failure(400, "content_moderated"),
    )
    @blp.alt_response(
        502,
        schema=OpenAIErrorSchema,
        description="The upstream failed or answered something unusable; nothing is charged.",
        example=_failure(502, "upstream_failed"),
    )
    @blp.alt_response(
        503,
        schema=OpenAIErrorSchema,
        description="No upstream can take it now (down, busy or rate limited); retry after "
        "`Retry-After`. Nothing is charged.",
        example=_failure(503, "upstream_unavailable"),
    )
    @blp.alt_response(
        504,
        schema=OpenAIErrorSchema,
        description="No lyrics within `LYRICS_TIMEOUT_SECONDS`; nothing is charged.",
        example=_failure(504, "upstream_timeout"),
    )
    def post(self, args: dict[str, Any]) -> Response:
        """Write (`write_full_song`) or edit (`edit`) song lyrics.

        Answered at once, with a title and style tags to pass on to a music model. The
        price is charged only when lyrics come back; the balance is checked first (429
        `insufficient_quota`).
        """
        ext = chorus()
        request = lyrics.LyricsRequest(
            model=args["model"],
            mode=args["mode"],
            prompt=args.get("prompt"),
            lyrics=args.get("lyrics"),
            title=args.get("title"),
        )
        session = ext.session()
        model = lyrics.find(session, request)
        accounts = ext.lyrics.routes(session, model)
        if not accounts:
            # Every route disabled or behind an open breaker: refused before anything is held.
            raise ApiError(
                503,
                MESSAGES["upstream_unavailable"],
                code="upstream_unavailable",
                headers={"Retry-After": "5"},
            )
        # The claim must outlive the call, so that a retry never runs it a second time.
        timeout = ext.settings.lyrics_timeout_seconds
        idempotency.claim(lock_seconds=timeout + 60)
        row = lyrics.begin(session, g.api_key, model)
        row_id, price, currency, created = row.id, row.price, row.currency, row.created_at
        ext.commit()  # the hold (and the claim) stand before anything is sent
        try:
            result, account_id = ext.lyrics.write(accounts, request)
        except lyrics.LyricsFailed as exc:
            status, headers = FAILURES.get(exc.code, (502, {}))
            lyrics.finish(session, row_id, result=None, account_id=None, error_code=exc.code)
            message = MESSAGES.get(exc.code, FALLBACK)
            response = openai_response(
                ApiError(status, message, code=exc.code, headers=dict(headers))
            )
            if status >= 500:
                idempotency.abandon()  # a retry with this key runs afresh
            idempotency.commit(response)
            return response
        lyrics.finish(session, row_id, result=result, account_id=account_id)
        response = jsonify(
            id=row_id,
            object="lyrics.generation",
            model=model.model_name,
            created=int(created.timestamp()),
            title=result["title"],
            style_tags=result["style_tags"],
            lyrics=result["lyrics"],
            cost={"amount": price, "currency": currency},
        )
        idempotency.commit(response)
        return response
