"""The entry point the web process serves: ``gunicorn -k app.webserver.Worker app.asgi:app``.

The Flask app of ``app.wsgi``, each request read whole by the event loop before a thread
runs it (``app.webserver``), and the answers it opens that go on for minutes followed on that
loop, in front of the thread hand-off: live event streams (``app.streams``) and early-audio
listeners (``app.listeners``).
"""

from app.listeners import Listeners
from app.streams import Streams
from app.webserver import asgi
from app.wsgi import app as wsgi_app

_chorus = wsgi_app.extensions["chorus"]
_streams = Streams(
    asgi(wsgi_app, _chorus.settings),
    _chorus.events,
    keepalive=_chorus.settings.events_keepalive_seconds,
    max_streams=_chorus.settings.events_max_streams,
)
app = Listeners(
    _streams, _chorus.previews, _chorus.storage, seconds=_chorus.settings.audio_link_ttl
)
