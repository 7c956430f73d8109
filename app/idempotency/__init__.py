"""``Idempotency-Key`` on POST routes: one answer per key, replayed for 24 hours.

``models`` holds the table and ``store`` the lookup / claim / record / purge statements (the
claim and its answer commit with the request's own effect); the ``@idempotent`` decorator
a view puts on is the API's (``app.api.idempotency``).
"""
