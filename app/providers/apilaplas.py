"""Apilaplas: a white-label copy of AIMLAPI's ``/v2/generate/audio`` protocol.

Reference: https://docs.apilaplas.com/api-references/music-models/minimax/minimax-music-legacy
and …/music-01. The docs list only ``minimax-music`` and ``music-01``; the catalog routes
nothing else here. Base URL: https://api.apilaplas.com.
"""

from __future__ import annotations

from typing import ClassVar

from app.providers.aimlapi import AimlapiAdapter


class ApilaplasAdapter(AimlapiAdapter):
    provider: ClassVar[str] = "apilaplas"
