"""Request and response shapes of ``/v1/music/generations`` (CONTRACT §1a)."""

from __future__ import annotations

from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from app.webhooks.outbox import EVENT_TYPES as WEBHOOK_EVENTS

SAMPLE_RATES = (16000, 24000, 32000, 44100)
BITRATES = (32000, 64000, 128000, 256000)
AUDIO_FORMATS = ("mp3", "wav", "pcm")
OUTPUT_FORMATS = ("url", "hex")
MAX_METADATA_PAIRS = 16


def _no_nul(value: str) -> None:
    # PostgreSQL text cannot hold NUL; refuse it here rather than fail at INSERT.
    if "\x00" in value:
        raise ValidationError("must not contain NUL characters")


class RequiredString(fields.String):
    """A required, non-empty string whose errors read like the seed's."""

    def __init__(self, name: str, **kwargs: Any) -> None:
        message = f"Missing required parameter: {name}"
        super().__init__(
            required=True,
            error_messages={"required": message, "null": message},
            validate=[validate.Length(min=1, error=message), _no_nul],
            **kwargs,
        )

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        result = super()._deserialize(value, attr, data, **kwargs)
        if isinstance(result, str) and not result.strip():
            # Whitespace-only is as empty as "" for a prompt or lyrics.
            raise ValidationError(self.error_messages["required"])
        return result


class AudioSettingSchema(Schema):
    class Meta:
        unknown = RAISE

    sample_rate = fields.Integer(validate=validate.OneOf(SAMPLE_RATES), strict=True)
    bitrate = fields.Integer(validate=validate.OneOf(BITRATES), strict=True)
    format = fields.String(validate=validate.OneOf(AUDIO_FORMATS))


class MetadataField(fields.Dict):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(
            keys=fields.String(validate=[validate.Length(min=1, max=64), _no_nul]),
            values=fields.String(validate=[validate.Length(max=512), _no_nul]),
            **kwargs,
        )

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        result = super()._deserialize(value, attr, data, **kwargs)
        if len(result) > MAX_METADATA_PAIRS:
            raise ValidationError(f"at most {MAX_METADATA_PAIRS} pairs")
        return result


class CreateGenerationSchema(Schema):
    class Meta:
        unknown = RAISE

    model = RequiredString("model", metadata={"example": "music-2.6"})
    catelogid = RequiredString(
        "catelogid",
        metadata={"description": "Catalog category id or name.", "example": "music_gen"},
    )
    prompt = RequiredString(
        "prompt", metadata={"example": "Pop music, happy, suitable for a sunny day"}
    )
    lyrics = RequiredString(
        "lyrics",
        metadata={"example": "[Verse]\nWalking down the street\n[Chorus]\nDancing in the sun"},
    )
    output_format = fields.String(load_default="url", validate=validate.OneOf(OUTPUT_FORMATS))
    audio_setting = fields.Nested(AudioSettingSchema, load_default=None)
    reference_audio_url = fields.Url(
        schemes={"http", "https"}, load_default=None, validate=validate.Length(max=2048)
    )
    callback_url = fields.Url(
        schemes={"http", "https"}, load_default=None, validate=validate.Length(max=2048)
    )
    webhook_events = fields.List(
        fields.String(validate=validate.OneOf(WEBHOOK_EVENTS)),
        load_default=None,
        validate=validate.Length(min=1),
        metadata={"description": "Event types to send for this job (default: all of them)."},
    )
    metadata = MetadataField(load_default=None)

    @validates_schema
    def _sizes(self, data: dict[str, Any], **_: Any) -> None:
        for name in ("prompt", "lyrics"):
            if len(data.get(name) or "") > 20_000:
                raise ValidationError("too long", field_name=name)


class ErrorDetailSchema(Schema):
    message = fields.String()
    type = fields.String()
    param = fields.String(allow_none=True)
    code = fields.String(allow_none=True)


class OpenAIErrorSchema(Schema):
    error = fields.Nested(ErrorDetailSchema)


class AudioInfoSchema(Schema):
    format = fields.String()
    sample_rate = fields.Integer(allow_none=True)
    bitrate = fields.Integer(allow_none=True)
    channels = fields.Integer(allow_none=True)
    duration_ms = fields.Integer()
    size = fields.Integer(metadata={"description": "bytes"})


class JobErrorSchema(Schema):
    code = fields.String()
    message = fields.String()


class UpstreamSchema(Schema):
    provider = fields.String(allow_none=True)
    account = fields.String(allow_none=True)


class JobUrlsSchema(Schema):
    get = fields.String()
    audio = fields.String(allow_none=True)


class JobSchema(Schema):
    id = fields.String(metadata={"example": "luid_01jd2x7k3m9q8r5t6v7w8x9y0z"})
    object = fields.String(metadata={"example": "music.generation"})
    model = fields.String()
    catelogid = fields.String()
    status = fields.String(
        metadata={"enum": ["QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"]}
    )
    created = fields.Integer(metadata={"description": "unix seconds"})
    started_at = fields.Integer(allow_none=True)
    finished_at = fields.Integer(allow_none=True)
    audio = fields.String(
        allow_none=True,
        metadata={
            "description": "A link to Chorus's own copy, signed afresh on every read (or hex when "
            "output_format is hex)."
        },
    )
    audio_info = fields.Nested(AudioInfoSchema, allow_none=True)
    error = fields.Nested(JobErrorSchema, allow_none=True)
    metadata = fields.Dict(keys=fields.String(), values=fields.String(), allow_none=True)
    upstream = fields.Nested(UpstreamSchema)
    urls = fields.Nested(JobUrlsSchema)
