"""What a tenant can see of the catalog and its money: /v1/models, /v1/balance, /v1/usage."""

from __future__ import annotations

import datetime as dt
from typing import Any

from flask import Response, g, jsonify
from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import Schema, ValidationError, fields, validates_schema
from sqlalchemy import select

from app.api.auth import require_key
from app.catalog.models import Category, Model, Route
from app.extensions import chorus
from app.jobs.schemas import OpenAIErrorSchema
from app.money.models import Balance
from app.money.usage import usage
from app.tenancy.models import Org

blp = Blueprint(
    "account", __name__, url_prefix="/v1", description="Models on sale, balance and usage."
)
blp.before_request(require_key)

MAX_USAGE_DAYS = 366


class ModelSchema(Schema):
    id = fields.String(metadata={"example": "music-2.6"})
    object = fields.String(metadata={"example": "model"})
    created = fields.Integer()
    owned_by = fields.String()
    categories = fields.List(fields.Dict())
    price = fields.Dict(
        metadata={"description": "Per generation: integer minor units and currency."}
    )
    min_balance = fields.Integer()
    limits = fields.Dict()


class ModelListSchema(Schema):
    object = fields.String()
    data = fields.List(fields.Nested(ModelSchema))


class BalanceSchema(Schema):
    object = fields.String()
    currency = fields.String()
    available = fields.Integer()
    held = fields.Integer()


class BalanceListSchema(Schema):
    object = fields.String()
    data = fields.List(fields.Nested(BalanceSchema))


class UsageArgs(Schema):
    from_ = fields.Date(data_key="from", required=True)
    to = fields.Date(required=True)

    @validates_schema
    def _range(self, data: dict[str, Any], **_: Any) -> None:
        if data["to"] < data["from_"]:
            raise ValidationError("must not be before 'from'", field_name="to")
        if (data["to"] - data["from_"]).days > MAX_USAGE_DAYS:
            raise ValidationError(f"at most {MAX_USAGE_DAYS} days at once", field_name="to")


@blp.route("/models")
class Models(MethodView):
    @blp.response(200, ModelListSchema)
    @blp.alt_response(403, schema=OpenAIErrorSchema, description="Missing or unknown API key.")
    def get(self) -> Response:
        """The published models this key may use, with categories, price and input limits."""
        session = chorus().session()
        rows = session.execute(
            select(Model, Category, Org.name)
            .join(Route, Route.model_id == Model.id)
            .join(Category, Category.id == Route.category_id)
            .outerjoin(Org, Org.id == Model.owner_org_id)
            .where(Model.status == "published")
            .order_by(Model.name)
        ).all()
        models: dict[str, dict[str, Any]] = {}
        for model, category, owner in rows:
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
        return jsonify(object="list", data=list(models.values()))


@blp.route("/balance")
class Balances(MethodView):
    @blp.response(200, BalanceListSchema)
    @blp.alt_response(403, schema=OpenAIErrorSchema, description="Missing or unknown API key.")
    def get(self) -> Response:
        """The org's balance per currency: ``available`` for new jobs, ``held`` by running ones."""
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
    @blp.arguments(UsageArgs, location="query")
    @blp.response(200)
    @blp.alt_response(400, schema=OpenAIErrorSchema, description="Bad dates.")
    @blp.alt_response(403, schema=OpenAIErrorSchema, description="Missing or unknown API key.")
    def get(self, args: dict[str, Any]) -> Response:
        """Jobs, seconds of audio and amount charged, by model and day (UTC), both days included."""
        start: dt.date = args["from_"]
        end: dt.date = args["to"]
        rows = usage(chorus().session(), g.api_key.org_id, start, end)
        return jsonify(
            object="list", data=rows, **{"from": start.isoformat(), "to": end.isoformat()}
        )
