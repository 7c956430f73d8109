"""Every HTTP call Chorus makes to the outside, in one place.

- ``sessions``: pooled ``requests`` sessions for the upstream APIs the operator's catalog names
  (trusted), whose connections run a ``before_sending`` callback once connected and before a
  request's first byte leaves; and ``Answer``, the one shape an upstream's reply takes whichever
  client carried it.
- ``fanout``: a batch of status GETs to one upstream at once, on urllib3's connection pool.
- ``guard``: the one SSRF policy for URLs that came from outside (webhook callbacks and
  endpoints, reference audio, the upstreams' audio links), on ssrfguard.
- ``downloads``: fetching an upstream's audio link, every redirect hop checked again.
- ``retry_after``: the one reader of a ``Retry-After`` header.
"""
