"""``/v2/generate/audio``: the AIMLAPI-compatible surface (CONTRACT §1b)."""
