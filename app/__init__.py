"""Chorus: a music-generation job gateway. The web app factory is ``app.web.create_app``."""
