"""Chorus's benchmark harness (``make bench``; ``python -m bench --help``).

Not a test: one run measures the web tier against a bare Flask app under the same gunicorn
settings, then runs N jobs end to end against the simulator twice (adaptive and fixed
polling), then the upstream protocols (MiniMax calls held open beside other jobs; useapi
throughput with K accounts), then submit throughput with a priced model beside a free one,
``Prefer: wait`` clients, webhook deliveries, and the shapes users run (``make run`` and the
Procfile: idle log lines, webhook latency), live event streams held open beside POST and
GET (and their delivery lag), and writes the figures to ``docs/benchmarks.md``
and ``docs/benchmarks.json``.

Each phase is one ``Phase`` in ``bench/phases/`` (its options, its run, its verdicts and its
section of the report) and ``__main__`` runs them in order; the measuring itself is in the
modules here (``jobs``, ``upstreams``, ``money``...), the shared parts of the report in
``report``.
"""
