"""``chorus catalog load FILE``: categories, accounts, models and routes from YAML.

Loading is an upsert keyed by ids and model names, so the same file can be loaded again
(the Procfile's release step does) without duplicating anything. A model's routes are
replaced by the file's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from marshmallow import Schema, ValidationError, fields, validate
from sqlalchemy import delete
from sqlalchemy.orm import Session

from app.catalog.models import Category, Model, Route, UpstreamAccount
from app.tenancy.keys import get_or_create_org

PROVIDERS = ("aimlapi", "apilaplas", "minimax", "useapi")
# The optional generation parameters a model may take (its ``limits.options``); a request that
# sets one its model does not list is refused by name.
OPTIONS = ("is_instrumental", "lyrics_optimizer", "seed", "channel")


class CategorySchema(Schema):
    id = fields.String(required=True, validate=validate.Length(min=1, max=64))
    name = fields.String(required=True, validate=validate.Length(min=1, max=200))
    description = fields.String(load_default=None)


class AccountSchema(Schema):
    id = fields.String(required=True, validate=validate.Length(min=1, max=64))
    provider = fields.String(required=True, validate=validate.OneOf(PROVIDERS))
    base_url = fields.String(required=True)
    credential_env = fields.String(load_default=None)
    max_in_flight = fields.Integer(load_default=20, validate=validate.Range(min=1))
    enabled = fields.Boolean(load_default=True)
    read_timeout = fields.Float(load_default=None, validate=validate.Range(min=1))
    upstream_account = fields.String(load_default=None)


class RouteSchema(Schema):
    category = fields.String(required=True)
    accounts = fields.List(fields.String(), required=True, validate=validate.Length(min=1))


class LengthLimit(Schema):
    min = fields.Integer(load_default=0, validate=validate.Range(min=0))
    max = fields.Integer(required=True, validate=validate.Range(min=1))
    # The field may be left out even though ``min`` bounds it when given (cover's lyrics).
    optional = fields.Boolean()


class SecondsLimit(Schema):
    min = fields.Float(load_default=0.0, validate=validate.Range(min=0))
    max = fields.Float(required=True, validate=validate.Range(min=1))


class LimitsSchema(Schema):
    prompt = fields.Nested(LengthLimit, load_default=None)
    lyrics = fields.Nested(LengthLimit, load_default=None)
    reference_audio = fields.String(
        load_default="none", validate=validate.OneOf(["none", "optional", "required"])
    )
    # The reference track's own bounds where a model's differ from the default (a WAV or MP3
    # over 15 s, at most 10 min and REFERENCE_AUDIO_MAX_BYTES): MiniMax's cover takes 6 s to
    # 6 min and at most 50 MB.
    reference_seconds = fields.Nested(SecondsLimit, load_default=None)
    reference_bytes = fields.Integer(load_default=None, validate=validate.Range(min=1024))
    options = fields.List(fields.String(validate=validate.OneOf(OPTIONS)), load_default=None)


class ModelSchema(Schema):
    name = fields.String(required=True, validate=validate.Length(min=1, max=200))
    upstream_model = fields.String(required=True)
    status = fields.String(
        load_default="published", validate=validate.OneOf(["published", "unpublished"])
    )
    description = fields.String(load_default=None)
    expected_seconds = fields.Float(load_default=60.0, validate=validate.Range(min=0))
    expected_spread = fields.Float(load_default=15.0, validate=validate.Range(min=0))
    deadline_seconds = fields.Float(load_default=None, validate=validate.Range(min=1))
    limits = fields.Nested(LimitsSchema, load_default=dict)
    # Ask upstreams that can stream the audio (MiniMax) for it as it is made: early audio.
    stream = fields.Boolean(load_default=False)
    routes = fields.List(fields.Nested(RouteSchema), load_default=list)
    price = fields.Integer(load_default=0, validate=validate.Range(min=0))
    currency = fields.String(load_default="USD", validate=validate.Regexp(r"^[A-Z]{3}$"))
    min_balance = fields.Integer(load_default=0, validate=validate.Range(min=0))
    # The org that owns (resells) the model: its own keys use it free, as on the seed platform.
    owner_org = fields.String(load_default=None)


class CatalogSchema(Schema):
    categories = fields.List(fields.Nested(CategorySchema), load_default=list)
    accounts = fields.List(fields.Nested(AccountSchema), load_default=list)
    models = fields.List(fields.Nested(ModelSchema), load_default=list)


class CatalogError(Exception):
    pass


def read(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
        # libyaml's parser where PyYAML was built with it (its wheels are): the same safe
        # subset of YAML, read about ten times faster than by the pure-Python one.
        if yaml.__with_libyaml__:
            raw = yaml.load(text, Loader=yaml.CSafeLoader)
        else:
            raw = yaml.safe_load(text)
    except (OSError, yaml.YAMLError) as exc:
        raise CatalogError(f"cannot read {path}: {exc}") from exc
    try:
        data: dict[str, Any] = CatalogSchema().load(raw or {})
    except ValidationError as exc:
        raise CatalogError(f"{path}: {exc.messages}") from exc
    return data


def load(session: Session, data: dict[str, Any]) -> dict[str, int]:
    """Upsert ``data`` (as returned by ``read``); returns counts of what was written."""
    for item in data["categories"]:
        session.merge(Category(**item))
    for item in data["accounts"]:
        session.merge(UpstreamAccount(**item))
    session.flush()
    routes = 0
    for item in data["models"]:
        item = dict(item)
        wanted = item.pop("routes")
        owner = item.pop("owner_org")
        item["owner_org_id"] = get_or_create_org(session, owner).id if owner else None
        item["limits"] = {k: v for k, v in item["limits"].items() if v is not None}
        model = session.query(Model).filter_by(name=item["name"]).one_or_none()
        if model is None:
            model = Model(**item)
            session.add(model)
        else:
            for key, value in item.items():
                setattr(model, key, value)
        session.flush()
        session.execute(delete(Route).where(Route.model_id == model.id))
        seen: set[tuple[str, str]] = set()
        for route in wanted:
            for priority, account_id in enumerate(route["accounts"]):
                if (route["category"], account_id) in seen:
                    raise CatalogError(
                        f"model {model.name}: account {account_id!r} listed twice "
                        f"for category {route['category']!r}"
                    )
                seen.add((route["category"], account_id))
                if session.get(UpstreamAccount, account_id) is None:
                    raise CatalogError(f"model {model.name}: unknown account {account_id!r}")
                if session.get(Category, route["category"]) is None:
                    raise CatalogError(
                        f"model {model.name}: unknown category {route['category']!r}"
                    )
                session.add(
                    Route(
                        model_id=model.id,
                        category_id=route["category"],
                        account_id=account_id,
                        priority=priority,
                    )
                )
                routes += 1
    session.flush()
    return {
        "categories": len(data["categories"]),
        "accounts": len(data["accounts"]),
        "models": len(data["models"]),
        "routes": routes,
    }
