"""Settings shared by the web app, the workers, the simulator and the CLI."""

from config.settings import Settings, load_settings

__all__ = ["Settings", "load_settings"]
