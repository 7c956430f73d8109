"""The catalog loader (read + load) against real Postgres."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from app.catalog import loader
from app.catalog.loader import CatalogError
from app.catalog.models import Category, Model, Route, UpstreamAccount
from app.db import Database
from tests.conftest import ROOT

CATALOG = ROOT / "config" / "catalog.yaml"


def snapshot(db: Database) -> dict[str, Any]:
    """Everything the loader writes, in a comparable form (ids included)."""
    with db.session() as session:
        return {
            "categories": [
                (c.id, c.name, c.description)
                for c in session.scalars(sa.select(Category).order_by(Category.id))
            ],
            "accounts": [
                (a.id, a.provider, a.base_url, a.credential_env, a.max_in_flight, a.enabled)
                for a in session.scalars(sa.select(UpstreamAccount).order_by(UpstreamAccount.id))
            ],
            "models": [
                (
                    m.id,
                    m.name,
                    m.upstream_model,
                    m.status,
                    m.description,
                    m.expected_seconds,
                    m.expected_spread,
                    m.deadline_seconds,
                    m.limits,
                )
                for m in session.scalars(sa.select(Model).order_by(Model.id))
            ],
            "routes": routes(db),
        }


def routes(db: Database, model: str | None = None) -> list[tuple[str, str, str, int]]:
    with db.session() as session:
        query = (
            sa.select(Model.name, Route.category_id, Route.account_id, Route.priority)
            .join(Route, Route.model_id == Model.id)
            .order_by(Model.name, Route.category_id, Route.priority)
        )
        if model is not None:
            query = query.where(Model.name == model)
        return [tuple(row) for row in session.execute(query)]  # type: ignore[misc]


def load(db: Database, data: dict[str, Any]) -> dict[str, int]:
    with db.transaction() as session:
        return loader.load(session, copy.deepcopy(data))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "catalog.yaml"
    path.write_text(text)
    return path


MINIMAL = """
categories: [{id: music_gen, name: Music}]
accounts:
  - {id: a1, provider: aimlapi, base_url: "https://api.aimlapi.com"}
models:
  - name: m1
    upstream_model: minimax/music-2.6
    routes: [{category: music_gen, accounts: [a1]}]
"""


# ------------------------------------------------------------------ the shipped catalog

# music-2.6 1, music-2.0 2 (MiniMax, then AIMLAPI), music-1.5 2 (two useapi accounts),
# minimax/music-1.5 1, minimax-music 2 (Apilaplas, then AIMLAPI); MiniMax's current models
# music-2.6-free, music-2.5, music-2.5-free, music-cover-free 1 each, music-cover 2 (MiniMax,
# then AIMLAPI), and lyrics-2.6 1 (in lyrics_gen).
SHIPPED_ROUTES = 15
SHIPPED_MODELS = 11


def test_the_shipped_catalog_loads(db: Database) -> None:
    data = loader.read(CATALOG)
    counts = load(db, data)
    assert counts == {
        "categories": 2,
        "accounts": 5,
        "models": SHIPPED_MODELS,
        "routes": SHIPPED_ROUTES,
    }
    state = snapshot(db)
    assert sorted(c[0] for c in state["categories"]) == ["lyrics_gen", "music_gen"]
    # Every upstream protocol is on the simulator, so the embedded default exercises each.
    assert {a[1] for a in state["accounts"]} == {"aimlapi", "apilaplas", "minimax", "useapi"}
    assert ("sim-aimlapi", "aimlapi", "{sim_url}", "SIM_API_KEY", 1000, True) in state["accounts"]
    assert routes(db, "music-2.0") == [
        ("music-2.0", "music_gen", "sim-minimax", 0),
        ("music-2.0", "music_gen", "sim-aimlapi", 1),
    ]
    assert {m[1] for m in state["models"]} == {
        "music-2.6",
        "music-2.0",
        "music-1.5",
        "minimax/music-1.5",
        "minimax-music",
        "music-2.6-free",
        "music-2.5",
        "music-2.5-free",
        "music-cover",
        "music-cover-free",
        "lyrics-2.6",
    }
    music26 = next(m for m in state["models"] if m[1] == "music-2.6")
    assert music26[2:8] == ("minimax/music-2.6", "published", "MiniMax Music 2.6", 2.0, 0.5, None)
    assert music26[8] == {
        "prompt": {"min": 0, "max": 2000},
        "lyrics": {"min": 1, "max": 3500},
        "reference_audio": "none",
        "options": ["is_instrumental", "lyrics_optimizer"],
    }
    cover = next(m for m in state["models"] if m[1] == "music-cover")
    assert cover[8] == {
        "prompt": {"min": 10, "max": 300},
        "lyrics": {"min": 10, "max": 1000, "optional": True},
        "reference_audio": "required",
        "reference_seconds": {"min": 6.0, "max": 360.0},
        "reference_bytes": 50_000_000,
        "options": [],
    }
    assert routes(db, "lyrics-2.6") == [("lyrics-2.6", "lyrics_gen", "sim-minimax", 0)]
    assert routes(db, "music-2.6") == [("music-2.6", "music_gen", "sim-aimlapi", 0)]


def test_loading_twice_changes_nothing(db: Database) -> None:
    data = loader.read(CATALOG)
    first_counts = load(db, data)
    first = snapshot(db)
    second_counts = load(db, loader.read(CATALOG))
    assert snapshot(db) == first  # same rows, same model ids: an upsert, not an insert
    assert second_counts == first_counts
    with db.session() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Route)) == SHIPPED_ROUTES
        assert session.scalar(sa.select(sa.func.count()).select_from(Model)) == SHIPPED_MODELS


def test_loading_twice_in_one_session(db: Database) -> None:
    data = loader.read(CATALOG)
    with db.transaction() as session:
        loader.load(session, copy.deepcopy(data))
        loader.load(session, copy.deepcopy(data))
    assert len(snapshot(db)["routes"]) == SHIPPED_ROUTES


def test_routes_are_replaced_not_duplicated(db: Database) -> None:
    data = loader.read(CATALOG)
    load(db, data)
    model_ids = {m[1]: m[0] for m in snapshot(db)["models"]}

    changed = copy.deepcopy(data)
    changed["accounts"].append(
        {
            "id": "backup",
            "provider": "apilaplas",
            "base_url": "https://api.apilaplas.com",
            "credential_env": None,
            "max_in_flight": 5,
            "enabled": True,
        }
    )
    model = next(m for m in changed["models"] if m["name"] == "music-2.6")
    model["routes"] = [{"category": "music_gen", "accounts": ["backup", "sim-aimlapi"]}]
    model["upstream_model"] = "minimax/music-2.6-renamed"
    load(db, changed)

    assert routes(db, "music-2.6") == [
        ("music-2.6", "music_gen", "backup", 0),
        ("music-2.6", "music_gen", "sim-aimlapi", 1),
    ]
    assert routes(db, "music-2.0") == [
        ("music-2.0", "music_gen", "sim-minimax", 0),
        ("music-2.0", "music_gen", "sim-aimlapi", 1),
    ]
    state = snapshot(db)
    assert {m[1]: m[0] for m in state["models"]} == model_ids  # updated in place
    assert next(m for m in state["models"] if m[1] == "music-2.6")[2] == "minimax/music-2.6-renamed"

    # Back to the file: the extra route goes, the account stays (loading never deletes accounts).
    load(db, loader.read(CATALOG))
    assert routes(db, "music-2.6") == [("music-2.6", "music_gen", "sim-aimlapi", 0)]
    assert len(snapshot(db)["routes"]) == SHIPPED_ROUTES
    assert "backup" in [a[0] for a in snapshot(db)["accounts"]]


def test_a_model_without_routes_loses_its_routes(db: Database) -> None:
    data = loader.read(CATALOG)
    load(db, data)
    changed = copy.deepcopy(data)
    next(m for m in changed["models"] if m["name"] == "minimax-music")["routes"] = []
    counts = load(db, changed)
    assert counts["routes"] == SHIPPED_ROUTES - 2  # minimax-music had two
    assert routes(db, "minimax-music") == []


# ------------------------------------------------------------------ bad references


def test_a_route_naming_an_unknown_account(db: Database) -> None:
    data = loader.read(CATALOG)
    load(db, data)
    before = snapshot(db)

    bad = copy.deepcopy(data)
    bad["models"][0]["routes"] = [{"category": "music_gen", "accounts": ["sim-aimlapi", "ghost"]}]
    with pytest.raises(CatalogError, match=r"unknown account 'ghost'") as info:
        load(db, bad)
    assert bad["models"][0]["name"] in str(info.value)
    # The transaction rolled back: the previous catalog is untouched.
    assert snapshot(db) == before


def test_a_route_naming_an_unknown_category(db: Database) -> None:
    data = loader.read(CATALOG)
    bad = copy.deepcopy(data)
    bad["models"][0]["routes"] = [{"category": "karaoke", "accounts": ["sim-aimlapi"]}]
    with pytest.raises(CatalogError, match=r"unknown category 'karaoke'"):
        load(db, bad)
    assert snapshot(db)["models"] == []


def test_a_minimal_file(db: Database, tmp_path: Path) -> None:
    data = loader.read(write(tmp_path, MINIMAL))
    assert load(db, data) == {"categories": 1, "accounts": 1, "models": 1, "routes": 1}
    (model,) = snapshot(db)["models"]
    # Defaults from the schema.
    assert model[3:8] == ("published", None, 60.0, 15.0, None)
    # No limits at all: stored empty (check_limits reads a missing reference_audio as "none").
    assert model[8] == {}
    (account,) = snapshot(db)["accounts"]
    assert account[3:] == (None, 20, True)


# ------------------------------------------------------------------ unreadable files


def test_an_empty_file_is_an_empty_catalog(tmp_path: Path) -> None:
    assert loader.read(write(tmp_path, "")) == {"categories": [], "accounts": [], "models": []}


def test_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="cannot read"):
        loader.read(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    "text",
    [
        "models: [unclosed\n",
        "categories:\n  - id: a\n   name: misaligned\n",
        "key: value\n\ttabbed: 1\n",
    ],
)
def test_invalid_yaml(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(CatalogError) as info:
        loader.read(path)
    message = str(info.value)
    assert message.startswith(f"cannot read {path}")
    assert "line" in message  # YAML's own position of the mistake


def test_missing_upstream_model(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace("    upstream_model: minimax/music-2.6\n", ""))
    with pytest.raises(CatalogError) as info:
        loader.read(path)
    message = str(info.value)
    assert str(path) in message
    assert "models" in message and "upstream_model" in message
    assert "Missing data for required field" in message


def test_bad_provider(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace("provider: aimlapi", "provider: suno"))
    with pytest.raises(CatalogError) as info:
        loader.read(path)
    message = str(info.value)
    assert "accounts" in message and "provider" in message
    assert "Must be one of" in message and "aimlapi" in message


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ("name: m1", "name: ''", "name"),
        ("accounts: [a1]", "accounts: []", "accounts"),
        (
            "upstream_model: minimax/music-2.6",
            "upstream_model: minimax/music-2.6\n    status: hidden",
            "status",
        ),
        (
            "upstream_model: minimax/music-2.6",
            "upstream_model: minimax/music-2.6\n    expected_seconds: -1",
            "expected_seconds",
        ),
        (
            "upstream_model: minimax/music-2.6",
            "upstream_model: minimax/music-2.6\n    limits: {reference_audio: maybe}",
            "reference_audio",
        ),
        (
            'base_url: "https://api.aimlapi.com"}',
            'base_url: "https://api.aimlapi.com", max_in_flight: 0}',
            "max_in_flight",
        ),
        ("categories: [{id: music_gen, name: Music}]", "categories: [{id: music_gen}]", "name"),
    ],
)
def test_schema_errors_name_the_field(tmp_path: Path, old: str, new: str, field: str) -> None:
    assert old in MINIMAL
    with pytest.raises(CatalogError, match=field):
        loader.read(write(tmp_path, MINIMAL.replace(old, new)))


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_a_file_that_is_not_a_mapping(tmp_path: Path, text: str) -> None:
    with pytest.raises(CatalogError, match="Invalid input type"):
        loader.read(write(tmp_path, text))


@pytest.mark.parametrize(
    "routes_yaml",
    [
        "[{category: music_gen, accounts: [a1, a1]}]",
        "[{category: music_gen, accounts: [a1]}, {category: music_gen, accounts: [a1]}]",
    ],
)
def test_a_duplicate_route_is_a_catalog_error(
    db: Database, tmp_path: Path, routes_yaml: str
) -> None:
    text = MINIMAL.replace("[{category: music_gen, accounts: [a1]}]", routes_yaml)
    assert text != MINIMAL
    with pytest.raises(CatalogError, match="a1"):
        load(db, loader.read(write(tmp_path, text)))
