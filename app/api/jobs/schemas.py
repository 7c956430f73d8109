"""Request and response shapes of ``/v1/music/generations`` (CONTRACT §1a)."""

from __future__ import annotations

from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from app.jobs.events import EVENT_TYPES as WEBHOOK_EVENTS

SAMPLE_RATES = (16000, 24000, 32000, 44100)
BITRATES = (32000, 64000, 128000, 256000)
AUDIO_FORMATS = ("mp3", "wav", "pcm")
OUTPUT_FORMATS = ("url", "hex")
CHANNELS = (1, 2)
MAX_SEED = 2**31 - 1
MAX_METADATA_PAIRS = 16
# Whatever the model: its own, tighter limits are checked against the catalog.
MAX_TEXT = 20_000


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


class GenerationAudioSettingSchema(AudioSettingSchema):
    """``/v1``'s audio settings: MiniMax's own, with ``channel`` (AIMLAPI's have none)."""

    channel = fields.Integer(
        validate=validate.OneOf(CHANNELS),
        strict=True,
        metadata={"description": "1 (mono) or 2 (stereo), for models that take it."},
    )


class StrictBoolean(fields.Boolean):
    """Only JSON true and false: "yes" or 1 for a flag is more likely a mistake than a choice
    (and 1 == True, so marshmallow's truthy sets alone would take it)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if not isinstance(value, bool):
            raise self.make_error("invalid")
        return value


def _flag(description: str) -> fields.Boolean:
    return StrictBoolean(load_default=None, metadata={"description": description})


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
        "prompt",
        metadata={
            "description": "Style, mood, scenario; each model has its own length limits "
            "(GET /v1/models).",
            "maxLength": MAX_TEXT,
            "example": "Pop music, happy, suitable for a sunny day",
        },
    )
    lyrics = fields.String(
        load_default=None,
        validate=_no_nul,
        metadata={
            "description": "Lines separated by \\n; [Intro] [Verse] [Chorus] [Bridge] [Outro] "
            "tags allowed; each model has its own length limits. Required, except with "
            "`is_instrumental` or `lyrics_optimizer`, or for a cover (`music-cover`), which "
            "takes the reference track's own words when it has none.",
            "maxLength": MAX_TEXT,
            "example": "[Verse]\nWalking down the street\n[Chorus]\nDancing in the sun",
        },
    )
    is_instrumental = _flag(
        "No vocals: the song follows the prompt alone, and lyrics are not needed (models that "
        "list `is_instrumental` in their `limits.options`)."
    )
    lyrics_optimizer = _flag(
        "Let MiniMax write the lyrics from the prompt when none are given (models that list "
        "`lyrics_optimizer`)."
    )
    seed = fields.Integer(
        load_default=None,
        strict=True,
        validate=validate.Range(min=0, max=MAX_SEED),
        metadata={
            "description": f"0 to {MAX_SEED}: the same seed and input give a similar song "
            "(models that list `seed`)."
        },
    )
    output_format = fields.String(load_default="url", validate=validate.OneOf(OUTPUT_FORMATS))
    audio_setting = fields.Nested(GenerationAudioSettingSchema, load_default=None)
    reference_audio_url = fields.Url(
        schemes={"http", "https"},
        load_default=None,
        validate=validate.Length(max=2048),
        metadata={
            "description": "A WAV or MP3 for models that take reference audio: over 15 s, or "
            "6 s to 6 min for `music-cover` (each model's `limits`).",
            "pattern": "^https?://",
        },
    )
    callback_url = fields.Url(
        schemes={"http", "https"},
        load_default=None,
        validate=validate.Length(max=2048),
        metadata={"description": "Webhook target for this job.", "pattern": "^https?://"},
    )
    metadata = MetadataField(
        load_default=None,
        metadata={
            "description": f"Up to {MAX_METADATA_PAIRS} string pairs, echoed back in the job.",
            "maxProperties": MAX_METADATA_PAIRS,
            "propertyNames": {"minLength": 1, "maxLength": 64},
        },
    )
    webhook_events = fields.List(
        fields.String(validate=validate.OneOf(WEBHOOK_EVENTS)),
        load_default=None,
        validate=validate.Length(min=1),
        metadata={"description": "Event types to send for this job (default: all of them)."},
    )
    # Checked by app.api.cancel_after (a 400 ``invalid_request`` naming it), like the header.
    cancel_after = fields.Raw(
        load_default=None,
        metadata={
            "type": "integer",
            "minimum": 5,
            "description": "The client's deadline, in seconds from the submit (at most the "
            "job's own deadline): a job still queued or running then ends FAILED "
            "`cancel_after_elapsed`, is cancelled upstream and charged nothing. Overrides the "
            "`Cancel-After` header.",
        },
    )

    @validates_schema
    def _sizes(self, data: dict[str, Any], **_: Any) -> None:
        for name in ("prompt", "lyrics"):
            if len(data.get(name) or "") > MAX_TEXT:
                raise ValidationError("too long", field_name=name)

    @validates_schema
    def _lyrics_needed(self, data: dict[str, Any], **_: Any) -> None:
        # Checked here, before the catalog, as the seed checks every required field first. A
        # request with a reference track may be a cover, whose model's limits decide.
        if (data.get("lyrics") or "").strip():
            return
        if data.get("is_instrumental") or data.get("lyrics_optimizer"):
            return
        if data.get("reference_audio_url"):
            return
        raise ValidationError("Missing required parameter: lyrics", field_name="lyrics")


class AudioInfoSchema(Schema):
    format = fields.String(required=True, allow_none=True, metadata={"example": "wav"})
    sample_rate = fields.Integer(required=True, allow_none=True, metadata={"example": 32000})
    bitrate = fields.Integer(required=True, allow_none=True, metadata={"example": 512000})
    channels = fields.Integer(required=True, allow_none=True, metadata={"example": 1})
    duration_ms = fields.Integer(required=True, allow_none=True, metadata={"example": 10000})
    size = fields.Integer(
        required=True, allow_none=True, metadata={"description": "bytes", "example": 640044}
    )


class JobErrorSchema(Schema):
    code = fields.String(required=True, allow_none=True, metadata={"example": "upstream_failed"})
    message = fields.String(required=True, allow_none=True)


class CostSchema(Schema):
    amount = fields.Integer(
        required=True, metadata={"description": "Integer minor units.", "example": 100}
    )
    currency = fields.String(required=True, allow_none=True, metadata={"example": "CNY"})
    state = fields.String(
        required=True,
        validate=validate.OneOf(("held", "captured", "released")),
        metadata={"description": "Held while the job runs, captured on success, else released."},
    )


class UpstreamSchema(Schema):
    provider = fields.String(required=True, allow_none=True, metadata={"example": "aimlapi"})
    account = fields.String(required=True, allow_none=True, metadata={"example": "sim-aimlapi"})
    attempts = fields.Integer(
        required=True,
        metadata={
            "example": 1,
            "description": "How many times an upstream may have made, and billed, a song for "
            "this job: 0 until one takes it, then 1. More only when an upstream answered with "
            "an error that may follow billed work (a MiniMax 1000 after a held call, say) and "
            "Chorus sent the job again.",
        },
    )


class JobUrlsSchema(Schema):
    get = fields.String(required=True, metadata={"description": "This job's own URL."})
    audio = fields.String(required=True, allow_none=True)
    content = fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "The audio itself, for the job's owner."},
    )


class JobSchema(Schema):
    id = fields.String(required=True, metadata={"example": "luid_01jd2x7k3m9q8r5t6v7w8x9y0z"})
    object = fields.String(required=True, metadata={"example": "music.generation"})
    model = fields.String(required=True)
    catelogid = fields.String(required=True)
    status = fields.String(
        required=True,
        validate=validate.OneOf(("QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED")),
    )
    created = fields.Integer(required=True, metadata={"description": "unix seconds"})
    started_at = fields.Integer(required=True, allow_none=True)
    finished_at = fields.Integer(required=True, allow_none=True)
    queue_position = fields.Integer(
        required=True,
        allow_none=True,
        metadata={
            "description": "While QUEUED: how many jobs queued earlier wait for the same upstream "
            "account (or, before one is chosen, the same model); 0 is next. Null otherwise.",
            "example": 0,
        },
    )
    progress = fields.Float(
        required=True,
        allow_none=True,
        metadata={
            "description": "While RUNNING: the share of the model's expected run time elapsed, "
            "never above 0.99; 1.0 once SUCCEEDED. Null otherwise.",
            "example": 0.4,
        },
    )
    eta = fields.Integer(
        required=True,
        allow_none=True,
        metadata={"description": "While RUNNING: unix seconds the job is expected to end by."},
    )
    cancel_after = fields.Integer(
        required=True,
        allow_none=True,
        metadata={"description": "unix seconds; the client's own deadline (Cancel-After)."},
    )
    audio = fields.String(
        required=True,
        allow_none=True,
        metadata={
            "description": "A link to Chorus's own copy, signed afresh on every read (or hex when "
            "output_format is hex)."
        },
    )
    audio_preview = fields.String(
        required=True,
        allow_none=True,
        metadata={
            "description": "While a streamed job is RUNNING: a link that plays the song as it is "
            "being made (chunked); null otherwise."
        },
    )
    audio_info = fields.Nested(AudioInfoSchema, required=True, allow_none=True)
    error = fields.Nested(JobErrorSchema, required=True, allow_none=True)
    metadata = fields.Dict(
        keys=fields.String(), values=fields.String(), required=True, allow_none=True
    )
    cost = fields.Nested(CostSchema, required=True)
    upstream = fields.Nested(UpstreamSchema, required=True)
    purged_at = fields.Integer(
        required=True,
        allow_none=True,
        metadata={
            "description": "unix seconds; set once retention removed the job's audio and request"
        },
    )
    urls = fields.Nested(JobUrlsSchema, required=True)


JOB_STATUSES = ("QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED")
MAX_PAGE = 100


class ListGenerationsQuerySchema(Schema):
    class Meta:
        unknown = RAISE

    limit = fields.Integer(
        load_default=20,
        validate=validate.Range(min=1, max=MAX_PAGE),
        metadata={"description": f"Jobs per page, 1 to {MAX_PAGE}."},
    )
    after = fields.String(
        load_default=None,
        validate=validate.Regexp(
            r"^luid_[0-9a-z]{26}$", error="must be a job id (the last_id of the previous page)"
        ),
        metadata={"description": "A job id: the page starts with the next older job."},
    )
    status = fields.String(
        load_default=None,
        validate=validate.OneOf(JOB_STATUSES),
        metadata={"description": "Only jobs in this status."},
    )


class JobListSchema(Schema):
    object = fields.String(required=True, metadata={"enum": ["list"]})
    data = fields.List(fields.Nested(JobSchema), required=True)
    first_id = fields.String(required=True, allow_none=True)
    last_id = fields.String(required=True, allow_none=True)
    has_more = fields.Boolean(required=True)
