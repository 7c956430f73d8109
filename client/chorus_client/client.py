"""``Client``: Chorus's ``/v1`` API from Python.

Every call that can change something is safe to retry, so the client retries on its own: a
submit always carries an ``Idempotency-Key`` (the same one on each retry), and Chorus answers
a retry with the first answer instead of making a second job. Retries happen on connection
errors, timeouts and 503s, honour ``Retry-After``, and are bounded (``max_retries``).
"""

from __future__ import annotations

import builtins
import os
import random
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests
from urllib3.exceptions import HTTPError as Urllib3Error

from chorus_client.errors import (
    ChorusError,
    JobCancelled,
    JobFailed,
    Unavailable,
    WaitTimeout,
    from_response,
    retry_after,
)
from chorus_client.sse import Event, SSEParser

__all__ = ["TERMINAL", "ChorusError", "Client", "Event", "check_ended"]

VERSION = "0.1.0"
GENERATIONS = "/v1/music/generations"
TERMINAL = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})
EVENT_PREFIX = "music.generation."
TERMINAL_EVENTS = frozenset(EVENT_PREFIX + s.lower() for s in TERMINAL)
# Chorus holds a Prefer: wait for at most this long; longer waits poll after it.
MAX_PREFER_WAIT = 60
# Chorus sends a keep-alive comment every 15 s on an event stream: a read that long silent
# several times over means the connection is dead, and the stream is resumed.
STREAM_READ_TIMEOUT = 60.0


def _job_id(job_or_id: str | Mapping[str, Any]) -> str:
    return job_or_id if isinstance(job_or_id, str) else str(job_or_id["id"])


def check_ended(job: dict[str, Any]) -> dict[str, Any]:
    """``job`` when it SUCCEEDED; ``JobFailed`` or ``JobCancelled`` when it ended otherwise."""
    if job.get("status") == "FAILED":
        raise JobFailed(job)
    if job.get("status") == "CANCELLED":
        raise JobCancelled(job)
    return job


class Client:
    def __init__(
        self,
        base_url: str,
        api_key: str,
        timeout: float = 30.0,
        *,
        max_retries: int = 3,
        max_retry_wait: float = 30.0,
        session: requests.Session | None = None,
    ) -> None:
        """``timeout``: seconds for each HTTP request to connect and to answer (a
        ``Prefer: wait`` request gets its wait on top). ``max_retries``: retries of one call
        after a connection error, a timeout or a 503; ``max_retry_wait`` caps each pause,
        whatever ``Retry-After`` says."""
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self.max_retries = max_retries
        self.max_retry_wait = max_retry_wait
        self._session = session or requests.Session()
        self._session.headers.update(
            {"Authorization": f"Bearer {api_key}", "User-Agent": f"chorus-client/{VERSION}"}
        )

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # ------------------------------------------------------------------ HTTP

    def _pause(self, attempt: int, hint: float | None) -> None:
        """Before retry ``attempt`` (1, 2, …): Chorus's ``Retry-After`` when it gave one, else
        exponential backoff with jitter; never longer than ``max_retry_wait``."""
        delay = hint if hint is not None else min(0.5 * 2 ** (attempt - 1), 8.0)
        delay *= random.uniform(1.0, 1.2)  # noqa: S311 - jitter, not secrecy
        time.sleep(min(delay, self.max_retry_wait))

    def _request(
        self,
        method: str,
        path_or_url: str,
        *,
        read_timeout: float | None = None,
        **kwargs: Any,
    ) -> requests.Response:
        """A 2xx response, after the bounded retries; else the typed error."""
        url = path_or_url if "://" in path_or_url else self.base_url + path_or_url
        timeout = (self.timeout, read_timeout or self.timeout)
        attempt = 0
        while True:
            try:
                response = self._session.request(method, url, timeout=timeout, **kwargs)
            except (requests.ConnectionError, requests.Timeout) as exc:
                attempt += 1
                if attempt > self.max_retries:
                    raise Unavailable(None, "connection_error", str(exc)) from exc
                self._pause(attempt, None)
                continue
            if response.status_code == 503 and attempt < self.max_retries:
                attempt += 1
                hint = retry_after(response.headers)
                response.close()
                self._pause(attempt, hint)
                continue
            if response.status_code >= 400:
                try:
                    raise from_response(response)
                finally:
                    response.close()
            return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._request(method, path, **kwargs).json()

    # ------------------------------------------------------------------ jobs

    def generate(
        self,
        model: str,
        prompt: str,
        lyrics: str | None = None,
        wait: bool | float = False,
        idempotency_key: str | None = None,
        *,
        catelogid: str = "music_gen",
        **params: Any,
    ) -> dict[str, Any]:
        """Submit a job (``POST /v1/music/generations``); the job object.

        ``params`` are the body's other fields (``output_format``, ``audio_setting``,
        ``callback_url``, ``metadata``, ``reference_audio_url``, …). With ``wait`` (True, or a
        number of seconds) the call returns only once the job has ended: the job if it
        SUCCEEDED, else ``JobFailed``/``JobCancelled``; ``WaitTimeout`` when the seconds ran
        out first. Chorus holds the answer for up to a minute (``Prefer: wait``), then the
        job is polled."""
        body: dict[str, Any] = {"model": model, "catelogid": catelogid, "prompt": prompt}
        if lyrics is not None:
            body["lyrics"] = lyrics
        body.update(params)
        headers = {"Idempotency-Key": idempotency_key or str(uuid.uuid4())}
        if not wait:
            return dict(self._json("POST", GENERATIONS, json=body, headers=headers))
        began = time.monotonic()
        limit = None if wait is True else float(wait)
        hold = MAX_PREFER_WAIT if limit is None else max(1, min(MAX_PREFER_WAIT, int(limit)))
        headers["Prefer"] = f"wait={hold}"
        job = dict(
            self._json(
                "POST", GENERATIONS, json=body, headers=headers, read_timeout=self.timeout + hold
            )
        )
        remaining = None if limit is None else limit - (time.monotonic() - began)
        return self.wait(job, timeout=remaining)

    def wait(
        self,
        job_or_id: str | Mapping[str, Any],
        timeout: float | None = None,
        poll_interval: float = 0.5,
    ) -> dict[str, Any]:
        """Poll the job until it ends (at most ``timeout`` seconds; None: until it ends, which
        Chorus's own deadline bounds). The job if it SUCCEEDED, else as ``generate``."""
        began = time.monotonic()
        job = dict(job_or_id) if not isinstance(job_or_id, str) else self.get(job_or_id)
        interval = poll_interval
        while job.get("status") not in TERMINAL:
            waited = time.monotonic() - began
            if timeout is not None and waited >= timeout:
                raise WaitTimeout(job, waited)
            pause = interval if timeout is None else min(interval, timeout - waited)
            time.sleep(max(pause, 0.0))
            interval = min(interval * 1.5, 5.0)  # a long job is looked at less often
            job = self.get(job["id"])
        return check_ended(job)

    def get(self, job_id: str) -> dict[str, Any]:
        return dict(self._json("GET", f"{GENERATIONS}/{quote(job_id, safe='')}"))

    def cancel(self, job_id: str, idempotency_key: str | None = None) -> dict[str, Any]:
        """Cancel a QUEUED or RUNNING job: the job, CANCELLED. A job that has ended raises
        ``Conflict`` (``job_not_cancellable``). The key makes the client's own retry of a
        cancel whose answer was lost get that answer, not a 409."""
        headers = {"Idempotency-Key": idempotency_key or str(uuid.uuid4())}
        path = f"{GENERATIONS}/{quote(job_id, safe='')}/cancel"
        return dict(self._json("POST", path, headers=headers))

    def list(
        self, limit: int | None = None, after: str | None = None, status: str | None = None
    ) -> dict[str, Any]:
        """One page of the org's jobs, newest first: ``{"data", "has_more", "last_id", …}``."""
        params = {"limit": limit, "after": after, "status": status}
        query = {k: v for k, v in params.items() if v is not None}
        return dict(self._json("GET", GENERATIONS, params=query))

    def iter_jobs(
        self, status: str | None = None, page_size: int = 100
    ) -> Iterator[dict[str, Any]]:
        """Every job of the org, newest first, page after page."""
        after = None
        while True:
            page = self.list(limit=page_size, after=after, status=status)
            yield from page["data"]
            if not page.get("has_more") or not page.get("last_id"):
                return
            after = page["last_id"]

    # ------------------------------------------------------------------ account

    def models(self) -> builtins.list[dict[str, Any]]:
        return builtins.list(self._json("GET", "/v1/models")["data"])

    def model(self, model_id: str) -> dict[str, Any]:
        return dict(self._json("GET", f"/v1/models/{quote(model_id, safe='')}"))

    def balance(self) -> builtins.list[dict[str, Any]]:
        """Per currency: ``available`` (for new jobs) and ``held`` (by running ones)."""
        return builtins.list(self._json("GET", "/v1/balance")["data"])

    # ------------------------------------------------------------------ events

    def events(
        self, job_id: str, last_event_id: str | None = None, *, poll_interval: float = 1.0
    ) -> Iterator[Event]:
        """The job's events (``GET …/{id}/events``, Server-Sent Events) until the one that
        ends it. A dropped connection, or a stream that ends early, is resumed from the
        last event's id (``Last-Event-ID``), so no event is lost or repeated. Against a
        Chorus without the stream (404 while the job exists), the job is polled instead and
        each status change yields an event of the same name, ``id`` None."""
        url = f"{self.base_url}{GENERATIONS}/{quote(job_id, safe='')}/events"
        last, delay, failures = last_event_id, 1.0, 0
        while True:
            headers = {"Accept": "text/event-stream", "Cache-Control": "no-store"}
            if last:
                headers["Last-Event-ID"] = last
            try:
                response = self._session.get(
                    url, headers=headers, stream=True, timeout=(self.timeout, STREAM_READ_TIMEOUT)
                )
            except (requests.ConnectionError, requests.Timeout) as exc:
                failures += 1
                if failures > self.max_retries:
                    raise Unavailable(None, "connection_error", str(exc)) from exc
                self._pause(failures, None)
                continue
            with response:
                if response.status_code == 404:
                    response.close()  # back to the pool for the polls
                    self.get(job_id)  # NotFoundError for an unknown job; else an older Chorus
                    yield from self._poll_events(job_id, poll_interval)
                    return
                if response.status_code == 204:  # the spec's "stop reconnecting"
                    return
                if response.status_code in (502, 503, 504) and failures < self.max_retries:
                    failures += 1
                    self._pause(failures, retry_after(response.headers))
                    continue
                if response.status_code >= 400:
                    raise from_response(response)
                parser = SSEParser()
                try:
                    for chunk in _chunks(response):
                        for event in parser.feed(chunk):
                            failures = 0
                            last = event.id or last
                            yield event
                            if event.type in TERMINAL_EVENTS:
                                return
                except requests.RequestException as exc:
                    failures += 1
                    if failures > self.max_retries:
                        raise Unavailable(None, "connection_error", str(exc)) from exc
                if parser.retry_ms is not None:
                    delay = parser.retry_ms / 1000
            time.sleep(min(delay, self.max_retry_wait))

    def _poll_events(self, job_id: str, interval: float) -> Iterator[Event]:
        status = progress = None
        while True:
            job = self.get(job_id)
            if job["status"] != status:
                status = job["status"]
                yield Event(EVENT_PREFIX + status.lower(), None, job)
            elif job.get("progress") is not None and job.get("progress") != progress:
                yield Event(
                    "progress",
                    None,
                    {"id": job["id"], "progress": job["progress"], "eta": job.get("eta")},
                )
            progress = job.get("progress")
            if status in TERMINAL:
                return
            time.sleep(interval)

    # ------------------------------------------------------------------ audio

    def download(self, job_or_id: str | Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
        """Stream the job's audio (``GET …/{id}/content``) to ``path``; the path.

        The file appears whole or not at all (written beside it, then renamed). A connection
        dropped mid-way resumes where it stopped (HTTP ``Range``), within ``max_retries``."""
        url = self._content_url(job_or_id)
        target = Path(path)
        partial = target.with_name(target.name + ".part")
        out = None
        written, attempt = 0, 0
        try:
            while True:
                headers = {"Range": f"bytes={written}-"} if written else {}
                try:
                    # An error answer raises here, before any file is made.
                    with self._request("GET", url, headers=headers, stream=True) as response:
                        if out is None:
                            out = partial.open("wb")
                        if written and response.status_code != 206:
                            out.seek(0)  # the server sent the whole file again
                            out.truncate()
                            written = 0
                        length = response.headers.get("Content-Length")
                        total = written + int(length) if length is not None else None
                        for block in response.iter_content(chunk_size=64 * 1024):
                            out.write(block)
                            written += len(block)
                        if total is None or written >= total:
                            break
                except requests.RequestException as exc:
                    attempt += 1
                    if attempt > self.max_retries:
                        raise Unavailable(None, "connection_error", str(exc)) from exc
                    self._pause(attempt, None)
            out.close()
            partial.replace(target)
        finally:
            if out is not None:
                out.close()
            partial.unlink(missing_ok=True)
        return target

    def _content_url(self, job_or_id: str | Mapping[str, Any]) -> str:
        """The job's ``urls.content`` when it is on this client's server (the key is never
        sent elsewhere); else the same route built from the id."""
        if not isinstance(job_or_id, str):
            content = (job_or_id.get("urls") or {}).get("content")
            if isinstance(content, str) and content.startswith(self.base_url + "/"):
                return content
        return f"{self.base_url}{GENERATIONS}/{quote(_job_id(job_or_id), safe='')}/content"


def _chunks(response: requests.Response) -> Iterator[bytes]:
    """The body as it arrives. ``iter_content(None)`` would wait for the end of a stream
    sent without chunked encoding; ``read1`` returns whatever the socket has."""
    raw = response.raw
    read1 = getattr(raw, "read1", None)
    if read1 is None:  # an urllib3 too old to have it: byte by byte is slow but correct
        yield from response.iter_content(chunk_size=1)
        return
    try:
        while data := read1(64 * 1024, decode_content=True):
            yield data
    except (Urllib3Error, OSError) as exc:  # as requests' own iter_content would raise it
        raise requests.ConnectionError(str(exc)) from exc
