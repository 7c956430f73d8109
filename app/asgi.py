"""The entry point the web process serves: ``gunicorn -k app.webserver.Worker app.asgi:app``.

The Flask app of ``app.wsgi``, each request read whole by the event loop before a thread
runs it (``app.webserver``), and the live event streams it opens followed on that loop
(``app.streams``), in front of the thread hand-off.
"""

from app.streams import Streams
from app.webserver import asgi
from app.wsgi import app as wsgi_app

_chorus = wsgi_app.extensions["chorus"]
app = Streams(
    asgi(wsgi_app, _chorus.settings),
    _chorus.events,
    keepalive=_chorus.settings.events_keepalive_seconds,
    max_streams=_chorus.settings.events_max_streams,
)
