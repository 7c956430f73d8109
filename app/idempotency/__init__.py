"""``Idempotency-Key`` on POST routes: one answer per key, replayed for 24 hours.

``models`` holds the table, ``store`` the claim / finish / release / purge statements, and
``hook`` the ``@idempotent`` decorator a view puts on.
"""
