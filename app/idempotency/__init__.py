"""``Idempotency-Key`` on POST routes: one answer per key, replayed for 24 hours.

``models`` holds the table and ``store`` the claim / finish / release / purge statements; the
``@idempotent`` decorator a view puts on is the API's (``app.api.idempotency``).
"""
