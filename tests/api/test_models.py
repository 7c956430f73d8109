"""GET /v1/models/{id}: one model as the list shows it, names with slashes included."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from app.catalog.models import Model
from tests.conftest import auth

pytestmark = pytest.mark.usefixtures("catalog")


def test_one_model_is_the_list_entry(client: Any, api_key: str) -> None:
    listed = client.get("/v1/models", headers=auth(api_key)).get_json()["data"]
    for entry in listed:
        one = client.get(f"/v1/models/{entry['id']}", headers=auth(api_key))
        assert one.status_code == 200, entry["id"]
        assert one.get_json() == entry
    cover = next(e for e in listed if e["id"] == "music-cover")
    assert cover["limits"]["reference_seconds"] == {"min": 6.0, "max": 360.0}
    lyrics = next(e for e in listed if e["id"] == "lyrics-2.6")
    assert lyrics["categories"] == [{"id": "lyrics_gen", "name": "Lyrics generation"}]


@pytest.mark.parametrize("path", ["minimax/music-1.5", "minimax%2Fmusic-1.5"])
def test_a_name_with_a_slash(client: Any, api_key: str, path: str) -> None:
    response = client.get(f"/v1/models/{path}", headers=auth(api_key))
    assert response.status_code == 200
    assert response.get_json()["id"] == "minimax/music-1.5"


@pytest.mark.parametrize("name", ["music-9", "minimax/music-9", "music-2.6/extra"])
def test_an_unknown_name_is_404_openai_style(client: Any, api_key: str, name: str) -> None:
    response = client.get(f"/v1/models/{name}", headers=auth(api_key))
    assert response.status_code == 404
    assert response.get_json() == {
        "error": {
            "message": f"The model '{name}' does not exist",
            "type": "not_found_error",
            "param": "model",
            "code": "model_not_found",
        }
    }


def test_an_unpublished_model_is_404(client: Any, db: Any, api_key: str) -> None:
    with db.transaction() as session:
        session.execute(
            sa.update(Model).where(Model.name == "music-2.5").values(status="unpublished")
        )
    assert client.get("/v1/models/music-2.5", headers=auth(api_key)).status_code == 404


def test_it_needs_a_key(client: Any) -> None:
    assert client.get("/v1/models/music-2.6").status_code == 403
