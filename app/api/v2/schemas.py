"""Request and response shapes of ``/v2/generate/audio``, as AIMLAPI names them."""

from __future__ import annotations

from typing import Any

from marshmallow import (
    EXCLUDE,
    RAISE,
    Schema,
    ValidationError,
    fields,
    post_load,
    validate,
    validates_schema,
)

from app.api.jobs.schemas import SAMPLE_RATES, AudioSettingSchema, RequiredString, _flag, _no_nul

STATUSES = ("queued", "generating", "completed", "error")


class V2AudioSettingSchema(AudioSettingSchema):
    """MiniMax's audio settings. AIMLAPI's 2026 docs call the sample rate
    ``audio_sample_rate`` (music-cover still says ``sample_rate``): both are read."""

    audio_sample_rate = fields.Integer(validate=validate.OneOf(SAMPLE_RATES), strict=True)

    @validates_schema
    def _one_rate(self, data: dict[str, Any], **_: Any) -> None:
        rates = {data[k] for k in ("sample_rate", "audio_sample_rate") if k in data}
        if len(rates) > 1:
            raise ValidationError("disagrees with sample_rate", field_name="audio_sample_rate")

    @post_load
    def _as_sample_rate(self, data: dict[str, Any], **_: Any) -> dict[str, Any]:
        # Stored under the one name the rest of Chorus (and every adapter) reads.
        if "audio_sample_rate" in data:
            data["sample_rate"] = data.pop("audio_sample_rate")
        return data


class SubmitSchema(Schema):
    class Meta:
        # An option Chorus does not support is refused by name rather than silently dropped.
        unknown = RAISE

    model = RequiredString("model", metadata={"example": "minimax/music-1.5"})
    prompt = RequiredString(
        "prompt",
        metadata={"example": "A calm and soothing instrumental music with gentle piano."},
    )
    lyrics = fields.String(
        load_default=None,
        validate=_no_nul,
        metadata={
            "description": "Required by models whose catalog limits need lyrics "
            "(e.g. minimax/music-1.5)."
        },
    )
    reference_audio_url = fields.Url(
        schemes={"http", "https"},
        load_default=None,
        validate=validate.Length(max=2048),
        metadata={"description": "WAV or MP3 longer than 15 s; required by minimax-music."},
    )
    audio_setting = fields.Nested(V2AudioSettingSchema, load_default=None)
    # AIMLAPI's minimax/music-2.6 takes both (its lyrics are then not needed).
    is_instrumental = _flag("No vocals; lyrics are not needed (e.g. minimax/music-2.6).")
    lyrics_optimizer = _flag("Lyrics written from the prompt when none are given.")

    @validates_schema
    def _sizes(self, data: dict[str, Any], **_: Any) -> None:
        for name in ("prompt", "lyrics"):
            if len(data.get(name) or "") > 20_000:
                raise ValidationError("too long", field_name=name)


class GenerationQuerySchema(Schema):
    class Meta:
        # Cache-busting or tracking parameters are harmless on a read.
        unknown = EXCLUDE

    generation_id = RequiredString(
        "generation_id", metadata={"description": "The id the submit answered with."}
    )


class SubmittedSchema(Schema):
    id = fields.String(metadata={"example": "luid_01jd2x7k3m9q8r5t6v7w8x9y0z"})
    status = fields.String(metadata={"enum": ["queued"]})


class AudioFileSchema(Schema):
    url = fields.String(metadata={"description": "A signed link to Chorus's own copy."})


class GenerationErrorSchema(Schema):
    name = fields.String()
    message = fields.String()


class GenerationSchema(Schema):
    id = fields.String()
    status = fields.String(metadata={"enum": list(STATUSES)})
    audio_file = fields.Nested(AudioFileSchema, allow_none=True)
    error = fields.Nested(GenerationErrorSchema, allow_none=True)


class AimlapiErrorSchema(Schema):
    message = fields.String()
    path = fields.String()
    requestId = fields.String()
    statusCode = fields.Integer()
    timestamp = fields.String()
