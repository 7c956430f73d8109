"""The entry point the web process serves: ``gunicorn -k app.webserver.Worker app.asgi:app``.

The Flask app of ``app.wsgi``, each request read whole by the event loop before a thread
runs it (``app.webserver``).
"""

from app.webserver import asgi
from app.wsgi import app as wsgi_app

app = asgi(wsgi_app, wsgi_app.extensions["chorus"].settings)
