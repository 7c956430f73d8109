"""The catalog as a submit sees it: a published model, sold in one category, at its price."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from app.catalog.models import Category, Model, Route


@dataclass(frozen=True)
class Offer:
    """A published model as sold in one category: what accepting a job needs to know."""

    model_id: int
    model_name: str
    category_id: str
    limits: dict[str, Any]
    deadline_seconds: float | None
    price: int = 0
    currency: str = "USD"
    min_balance: int = 0
    owner_org_id: int | None = None

    def price_for(self, org_id: int) -> int:
        """The seed platform's rule: an org's own models are free to it."""
        return 0 if self.owner_org_id == org_id else self.price


def find_model(session: Session, name: str, catelogid: str) -> Offer | None:
    """The published model ``name`` routed in the category whose id or name is ``catelogid``."""
    row = session.execute(
        select(Model, Category.id)
        .join(Route, Route.model_id == Model.id)
        .join(Category, Category.id == Route.category_id)
        .where(
            Model.name == name,
            Model.status == "published",
            or_(Category.id == catelogid, Category.name == catelogid),
        )
        .limit(1)
    ).first()
    if row is None:
        return None
    model, category_id = row
    return Offer(
        model.id,
        model.name,
        category_id,
        dict(model.limits or {}),
        model.deadline_seconds,
        price=model.price,
        currency=model.currency,
        min_balance=model.min_balance,
        owner_org_id=model.owner_org_id,
    )
