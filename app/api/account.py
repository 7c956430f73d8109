"""What a tenant can see of the catalog and its money: /v1/models, /v1/balance, /v1/usage."""

from __future__ import annotations

import datetime as dt
from typing import Any

from flask import Response, g, jsonify
from flask.views import MethodView
from marshmallow import Schema, ValidationError, fields, validates_schema
from sqlalchemy import select

from app.api.auth import require_key
from app.api.errors import ApiError, openai_body
from app.api.openapi import ApiBlueprint, example
from app.api.schemas import OpenAIErrorSchema
from app.catalog.models import Category, Model, Route
from app.extensions import chorus
from app.jobs.usage import usage
from app.money.models import Balance
from app.tenancy.models import Org

blp = ApiBlueprint(
    "account",
    __name__,
    url_prefix="/v1",
    description="Models on sale, balance and usage.",
    bearer=True,
    rate_limited=True,
)
blp.before_request(require_key)

MAX_USAGE_DAYS = 366


class CategoryRefSchema(Schema):
    id = fields.String(required=True, metadata={"example": "music_gen"})
    name = fields.String(required=True, metadata={"example": "Music generation"})


class PriceSchema(Schema):
    amount = fields.Integer(
        required=True,
        metadata={"description": "Per generation, integer minor units (0: the org's own model)."},
    )
    currency = fields.String(required=True, metadata={"example": "CNY"})


class ModelSchema(Schema):
    id = fields.String(required=True, metadata={"example": "music-2.6"})
    object = fields.String(required=True, metadata={"example": "model"})
    created = fields.Integer(required=True)
    owned_by = fields.String(required=True, metadata={"example": "chorus"})
    categories = fields.List(fields.Nested(CategoryRefSchema), required=True)
    price = fields.Nested(PriceSchema, required=True)
    min_balance = fields.Integer(
        required=True, metadata={"description": "The balance must stay above this to submit."}
    )
    limits = fields.Dict(
        required=True,
        metadata={
            "description": "Input limits: character bounds of prompt and lyrics, and whether "
            "reference audio is none, optional or required."
        },
    )


class ModelListSchema(Schema):
    object = fields.String(required=True, metadata={"example": "list"})
    data = fields.List(fields.Nested(ModelSchema), required=True)


class BalanceSchema(Schema):
    object = fields.String(required=True, metadata={"example": "balance"})
    currency = fields.String(required=True)
    available = fields.Integer(required=True, metadata={"description": "For new jobs."})
    held = fields.Integer(required=True, metadata={"description": "By jobs still running."})


class BalanceListSchema(Schema):
    object = fields.String(required=True)
    data = fields.List(fields.Nested(BalanceSchema), required=True)


class UsageRowSchema(Schema):
    date = fields.Date(required=True)
    model = fields.String(required=True)
    jobs = fields.Integer(required=True)
    succeeded = fields.Integer(required=True)
    audio_seconds = fields.Float(required=True)
    amount = fields.Integer(required=True, metadata={"description": "Charged, minor units."})
    currency = fields.String(required=True, allow_none=True)


class UsageSchema(Schema):
    object = fields.String(required=True)
    from_ = fields.Date(data_key="from", required=True)
    to = fields.Date(required=True)
    data = fields.List(fields.Nested(UsageRowSchema), required=True)


MODELS_EXAMPLE = {
    "object": "list",
    "data": [
        {
            "id": "music-2.6",
            "object": "model",
            "created": 0,
            "owned_by": "chorus",
            "categories": [{"id": "music_gen", "name": "Music generation"}],
            "price": {"amount": 100, "currency": "CNY"},
            "min_balance": 0,
            "limits": {
                "prompt": {"min": 0, "max": 2000},
                "lyrics": {"min": 1, "max": 3500},
                "reference_audio": "none",
            },
        }
    ],
}
BALANCE_EXAMPLE = {
    "object": "list",
    "data": [{"object": "balance", "currency": "CNY", "available": 99800, "held": 200}],
}
USAGE_EXAMPLE = {
    "object": "list",
    "from": "2026-11-01",
    "to": "2026-11-30",
    "data": [
        {
            "date": "2026-11-20",
            "model": "music-2.6",
            "jobs": 3,
            "succeeded": 2,
            "audio_seconds": 20.0,
            "amount": 200,
            "currency": "CNY",
        }
    ],
}
BAD_DATES_EXAMPLE = example(
    "'to' before 'from'",
    400,
    "Invalid value for 'to': must not be before 'from'",
    param="to",
    code="invalid_value",
)


class UsageArgs(Schema):
    from_ = fields.Date(
        data_key="from",
        required=True,
        metadata={"description": "First day, UTC, included.", "example": "2026-11-01"},
    )
    to = fields.Date(
        required=True, metadata={"description": "Last day, UTC, included.", "example": "2026-11-30"}
    )

    @validates_schema
    def _range(self, data: dict[str, Any], **_: Any) -> None:
        if data["to"] < data["from_"]:
            raise ValidationError("must not be before 'from'", field_name="to")
        if (data["to"] - data["from_"]).days > MAX_USAGE_DAYS:
            raise ValidationError(f"at most {MAX_USAGE_DAYS} days at once", field_name="to")


MODEL_ID = {
    "in": "path",
    "name": "model_id",
    "description": "The model's name; it may hold a slash (`minimax/music-1.5`).",
    "example": "music-2.6",
}


def published_models(name: str | None = None) -> list[dict[str, Any]]:
    """The published models (or the one named ``name``) in OpenAI's shape, with Chorus's
    categories, price for the key's org and input limits."""
    query = (
        select(Model, Category, Org.name)
        .join(Route, Route.model_id == Model.id)
        .join(Category, Category.id == Route.category_id)
        .outerjoin(Org, Org.id == Model.owner_org_id)
        .where(Model.status == "published")
        .order_by(Model.name)
    )
    if name is not None:
        query = query.where(Model.name == name)
    models: dict[str, dict[str, Any]] = {}
    for model, category, owner in chorus().session().execute(query).all():
        entry = models.setdefault(
            model.name,
            {
                "id": model.name,
                "object": "model",
                "created": 0,
                "owned_by": owner or "chorus",
                "categories": [],
                "price": {
                    "amount": 0 if model.owner_org_id == g.api_key.org_id else model.price,
                    "currency": model.currency,
                },
                "min_balance": model.min_balance,
                "limits": model.limits or {},
            },
        )
        category_ref = {"id": category.id, "name": category.name}
        if category_ref not in entry["categories"]:
            entry["categories"].append(category_ref)
    return list(models.values())


@blp.route("/models")
class Models(MethodView):
    @blp.response(200, ModelListSchema, description="The models.", example=MODELS_EXAMPLE)
    def get(self) -> Response:
        """The published models this key may use, with categories, price and input limits."""
        return jsonify(object="list", data=published_models())


# ``path``: model names may hold slashes (AIMLAPI's ``minimax/music-1.5``).
@blp.route("/models/<path:model_id>", parameters=[MODEL_ID])
class OneModel(MethodView):
    @blp.response(200, ModelSchema, description="The model.", example=MODELS_EXAMPLE["data"][0])
    @blp.alt_response(
        404,
        schema=OpenAIErrorSchema,
        description="No published model of that name.",
        example=openai_body(
            404, "The model 'music-9' does not exist", param="model", code="model_not_found"
        ),
    )
    def get(self, model_id: str) -> Response:
        """One published model, as the list shows it (OpenAI's `GET /v1/models/{model}`)."""
        found = published_models(model_id)
        if not found:
            raise ApiError(
                404,
                f"The model '{model_id}' does not exist",
                param="model",
                code="model_not_found",
            )
        return jsonify(found[0])


@blp.route("/balance")
class Balances(MethodView):
    @blp.response(
        200, BalanceListSchema, description="One entry per currency.", example=BALANCE_EXAMPLE
    )
    def get(self) -> Response:
        """The org's balance per currency: `available` for new jobs, `held` by running ones."""
        rows = (
            chorus()
            .session()
            .scalars(
                select(Balance).where(Balance.org_id == g.api_key.org_id).order_by(Balance.currency)
            )
        )
        data = [
            {"object": "balance", "currency": b.currency, "available": b.available, "held": b.held}
            for b in rows
        ]
        return jsonify(object="list", data=data)


@blp.route("/usage")
class Usage(MethodView):
    @blp.arguments(UsageArgs(), location="query")
    @blp.response(
        200, UsageSchema, description="Usage rows, oldest day first.", example=USAGE_EXAMPLE
    )
    @blp.alt_response(
        400,
        schema=OpenAIErrorSchema,
        description="A date missing or unreadable, `to` before `from`, or a range over 366 days.",
        examples={"invalid_value": BAD_DATES_EXAMPLE},
    )
    def get(self, args: dict[str, Any]) -> Response:
        """Jobs, seconds of audio and amount charged, by model and day (UTC), both days included."""
        start: dt.date = args["from_"]
        end: dt.date = args["to"]
        rows = usage(chorus().session(), g.api_key.org_id, start, end)
        return jsonify(
            object="list", data=rows, **{"from": start.isoformat(), "to": end.isoformat()}
        )
