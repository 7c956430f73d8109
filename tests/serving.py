"""A Chorus app served over a real socket by a threaded server, for truly concurrent requests."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from werkzeug.serving import make_server


@contextmanager
def serve(app: Any) -> Iterator[str]:
    """Serve ``app`` on a free local port; yields its base URL. Stops the wait hub after."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        stop_hub(app)


def stop_hub(app: Any) -> None:
    """Stop the app's ``Prefer: wait`` listener thread, if a request started one."""
    hub = app.extensions["chorus"]._hub
    if hub is not None:
        hub.stop()
