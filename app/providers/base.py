"""What every adapter takes and returns, and the base that owns the HTTP."""

from __future__ import annotations

import abc
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar

import requests
from requests.utils import select_proxy

from app.http.fanout import FanOut, Get, TransportError
from app.http.retry_after import parse_retry_after
from app.http.sessions import (
    POOL_SIZE,
    USER_AGENT,
    Answer,
    before_sending,
    pooled_session,
    reports_sending,
)


@dataclass(frozen=True)
class AccountConfig:
    """One upstream account as the adapter sees it: where, and with which secret."""

    id: str
    provider: str
    base_url: str
    api_key: str | None
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    # The account name the upstream wants in requests (useapi.net's "account"), if any.
    upstream_account: str | None = None


@dataclass(frozen=True)
class GenerationRequest:
    upstream_model: str
    prompt: str
    lyrics: str | None = None
    output_format: str = "url"
    audio_setting: dict[str, Any] = field(default_factory=dict)
    reference_audio_url: str | None = None
    # MiniMax's options (each model's catalog ``limits.options`` says which it takes).
    is_instrumental: bool = False
    lyrics_optimizer: bool = False
    seed: int | None = None
    # The catalog model asks for the audio as it is made (where the protocol can stream it).
    stream: bool = False


# Receives each piece of a streamed song's audio, in order, as it arrives.
OnAudio = Callable[[bytes], None]


class PollState(StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(frozen=True)
class PollResult:
    state: PollState
    raw_status: str | None = None
    audio_url: str | None = None
    # Synchronous upstreams (MiniMax hex output) hand the audio back inline.
    audio_bytes: bytes | None = None
    audio_info: dict[str, Any] = field(default_factory=dict)
    error_code: str | None = None
    error_message: str | None = None

    @classmethod
    def unusable(cls, raw_status: str | None, message: str) -> PollResult:
        """A song the upstream made (and billed) whose audio cannot be had: final, never a
        reason to submit again."""
        return cls(
            PollState.FAILED,
            raw_status,
            error_code="upstream_invalid_result",
            error_message=message,
        )

    @classmethod
    def completed(cls, raw_status: str | None, url: object, missing: str) -> PollResult:
        """Success with the upstream's audio link, or ``unusable`` if it gave none we can fetch."""
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            return cls.unusable(raw_status, missing)
        return cls(PollState.SUCCEEDED, raw_status, audio_url=url)


@dataclass(frozen=True)
class Submission:
    """What a submit returned: an upstream id to follow, and for sync upstreams the result."""

    generation_id: str | None
    result: PollResult | None = None


class ProviderError(Exception):
    """An upstream call that did not give a usable answer.

    ``retryable``: trying again later may work (5xx, 429, connection trouble).
    ``maybe_created``: the request reached the upstream and it may have created the job
    (a read timeout after sending a POST); the engine must never blindly submit again.
    ``maybe_billed``: the upstream answered that it did not make the song, but may have
    charged for the work it did (a MiniMax error after a held call); a retry then sends it
    again and says so in the job (``upstream_attempts``).
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        retryable: bool,
        maybe_created: bool = False,
        retry_after: float | None = None,
        status_code: int | None = None,
        maybe_billed: bool = False,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retryable = retryable
        self.maybe_created = maybe_created
        self.maybe_billed = maybe_billed
        self.retry_after = retry_after
        self.status_code = status_code


class Adapter(abc.ABC):
    """One upstream protocol. Subclasses implement ``submit`` and ``poll``, and ``cancel``
    where the protocol has a call for it."""

    provider: ClassVar[str]
    # "async": submit returns an id that ``poll`` follows. "sync": submit holds the call
    # open until the audio is ready and returns it in ``Submission.result``.
    mode: ClassVar[str] = "async"
    # What it means when a finished song's link already answers 4xx as Chorus downloads it.
    gone_audio_code: ClassVar[str] = "upstream_invalid_result"

    def __init__(self, account: AccountConfig) -> None:
        self.account = account

    @abc.abstractmethod
    def submit(self, request: GenerationRequest) -> Submission: ...

    @property
    def reports_sending(self) -> bool:
        """Whether ``send`` runs its callback only once the request is about to leave (after
        the connection is made), rather than before the submit starts."""
        return False

    def send(
        self,
        request: GenerationRequest,
        on_send: Callable[[], None],
        on_audio: OnAudio | None = None,
    ) -> Submission:
        """``submit``, with ``on_send`` run once before anything of it can reach the upstream.

        A failure before ``on_send`` ran reached nothing. Whatever ``on_send`` raises stops the
        submit unsent and comes out of this call. With ``on_audio``, a streamed song's pieces
        are handed to it as they arrive (``submit_streamed``).
        """

        def call() -> Submission:
            if on_audio is None:
                return self.submit(request)
            return self.submit_streamed(request, on_audio)

        if not self.reports_sending:
            on_send()
            return call()
        with before_sending(on_send):
            return call()

    def submit_streamed(self, request: GenerationRequest, on_audio: OnAudio) -> Submission:
        """``submit``, handing each piece of the audio to ``on_audio`` as it arrives, where
        the protocol streams and ``request.stream`` asks for it. The default cannot stream:
        the audio comes whole at the end, as ``submit`` gives it."""
        return self.submit(request)

    @abc.abstractmethod
    def poll(self, generation_id: str) -> PollResult: ...

    @property
    def polls_together(self) -> bool:
        """Whether ``poll_many`` asks about a batch at once (from one thread). Otherwise the
        engine polls a batch one job per thread."""
        return False

    def poll_many(self, generation_ids: Sequence[str]) -> list[PollResult | ProviderError]:
        """``poll`` for each id, in order; a failed call is its ProviderError, not a raise."""
        results: list[PollResult | ProviderError] = []
        for generation_id in generation_ids:
            try:
                results.append(self.poll(generation_id))
            except ProviderError as exc:
                results.append(exc)
        return results

    def cancel(self, generation_id: str) -> None:
        """Tell the upstream that nobody wants this generation any more.

        The default tells nothing: AIMLAPI, Apilaplas and MiniMax have no such call. May
        raise ProviderError; a cancel in Chorus stands whatever the upstream answers.
        """
        return None


class HTTPAdapter(Adapter):
    """Owns the session, the timeouts and the mapping of transport faults to ProviderError."""

    def __init__(self, account: AccountConfig, session: requests.Session | None = None) -> None:
        super().__init__(account)
        # A session handed in (a test's, say) carries every call; the batched status calls
        # go around requests, so they are only made on the adapter's own session.
        self._own_session = session is None
        if session is None:
            session = pooled_session(account.base_url)
        self.session = session
        self.session.headers["User-Agent"] = USER_AGENT
        self._fanout: FanOut | None = None
        self._fanout_lock = threading.Lock()

    # ------------------------------------------------------------------ status calls

    def status_call(self, generation_id: str) -> Get | None:
        """The GET that asks the upstream about a generation; None where there is none."""
        return None

    def parse_poll(self, response: Answer) -> PollResult:
        """What a successful status answer says."""
        raise NotImplementedError

    def poll(self, generation_id: str) -> PollResult:
        call = self.status_call(generation_id)
        if call is None:
            raise NotImplementedError(f"{type(self).__name__} has no status call")
        return self.parse_poll(self.request("GET", call.path, params=call.params))

    @property
    def polls_together(self) -> bool:
        return self.fanout() is not None

    @property
    def reports_sending(self) -> bool:
        return reports_sending(self.session, self.account.base_url)

    def fanout(self) -> FanOut | None:
        """The client that sends a batch's status calls at once, made on first use; None when
        the protocol has no status GET, the session was handed in, or a proxy stands between
        (the fan-out speaks to the upstream directly)."""
        if self._fanout is None:
            if not self._own_session or self.status_call("probe") is None:
                return None
            if select_proxy(self.account.base_url, self.session.proxies):
                return None
            with self._fanout_lock:
                if self._fanout is None:
                    headers = {
                        "User-Agent": str(self.session.headers.get("User-Agent", USER_AGENT)),
                        "Accept": "*/*",
                        **self.auth_headers(),
                    }
                    verify = self.session.verify
                    self._fanout = FanOut(
                        self.account.base_url,
                        headers=headers,
                        connect_timeout=self.account.connect_timeout,
                        read_timeout=self.account.read_timeout,
                        verify=verify if isinstance(verify, str | bool) else True,
                        max_idle=POOL_SIZE,
                    )
        return self._fanout

    def poll_many(self, generation_ids: Sequence[str]) -> list[PollResult | ProviderError]:
        fanout = self.fanout()
        if fanout is None:
            return super().poll_many(generation_ids)
        calls = [call for g in generation_ids if (call := self.status_call(g)) is not None]
        if len(calls) != len(generation_ids):
            return super().poll_many(generation_ids)
        results: list[PollResult | ProviderError] = []
        answers = fanout.get_many(calls)
        for generation_id, answer in zip(generation_ids, answers, strict=True):
            if isinstance(answer, TransportError):
                results.append(_transport_error(answer, self.timeout[1]))
            elif answer.is_redirect:
                # The fan-out follows no redirect; requests does, as for any single call.
                results.extend(super().poll_many([generation_id]))
            elif answer.status_code >= 400:
                results.append(self.http_error(answer))
            else:
                try:
                    results.append(self.parse_poll(answer))
                except ProviderError as exc:
                    results.append(exc)
        return results

    # ------------------------------------------------------------------ calls

    @property
    def timeout(self) -> tuple[float, float]:
        return (self.account.connect_timeout, self.account.read_timeout)

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.account.api_key}"} if self.account.api_key else {}

    def request(self, method: str, path: str, **kwargs: Any) -> Answer:
        """Send one request; transport faults become ProviderError, HTTP errors are checked."""
        response = self._send(method, path, **kwargs)
        try:
            answer = self._read(response, method)
        finally:
            response.close()
        if answer.status_code >= 400:
            raise self.http_error(answer)
        return answer

    def open_stream(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """Send one request and hand back its response with the body still unread (the
        caller reads it as it arrives, then closes it). HTTP errors are checked as
        ``request`` checks them; the account's read timeout bounds each read."""
        response = self._send(method, path, stream=True, **kwargs)
        if response.status_code >= 400:
            try:
                answer = self._read(response, method)
            finally:
                response.close()
            raise self.http_error(answer)
        return response

    def _send(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        url = self.account.base_url.rstrip("/") + path
        headers = {**self.auth_headers(), **kwargs.pop("headers", {})}
        try:
            return self.session.request(
                method, url, headers=headers, timeout=self.timeout, **kwargs
            )
        except requests.RequestException as exc:
            raise self.transport_error(exc, method) from exc

    def _read(self, response: requests.Response, method: str) -> Answer:
        """The whole body (a body cut short is a transport fault like any other)."""
        try:
            return Answer.of(response)
        except requests.RequestException as exc:
            raise self.transport_error(exc, method) from exc

    def transport_error(self, exc: requests.RequestException, method: str) -> ProviderError:
        """A transport fault as a ProviderError; one after a POST went out may have created
        the job upstream."""
        sends_work = method.upper() == "POST"
        if isinstance(exc, requests.ConnectTimeout):
            return ProviderError("upstream_unavailable", f"connect timeout: {exc}", retryable=True)
        if isinstance(exc, requests.ConnectionError):
            # A reset after the body went out may still have created the job upstream.
            return ProviderError(
                "upstream_unavailable",
                f"connection failed: {exc}",
                retryable=True,
                maybe_created=sends_work and _was_sent(exc),
            )
        if isinstance(exc, requests.Timeout):
            return ProviderError(
                "upstream_timeout",
                f"no answer within {self.timeout[1]:g}s",
                retryable=True,
                maybe_created=sends_work,
            )
        return ProviderError("upstream_unavailable", str(exc), retryable=True)

    def http_error(self, response: Answer) -> ProviderError:
        """Map an HTTP error status; adapters override to read their own error bodies."""
        status = response.status_code
        detail = _snippet(response)
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        if status == 429:
            return ProviderError(
                "upstream_rate_limited",
                detail,
                retryable=True,
                retry_after=retry_after,
                status_code=status,
            )
        if status in (401, 403):
            return ProviderError(
                "upstream_auth_failed", detail, retryable=False, status_code=status
            )
        if status >= 500:
            # A gateway timeout on a POST means the upstream may still be making the song.
            return ProviderError(
                "upstream_unavailable",
                f"HTTP {status}: {detail}",
                retryable=True,
                maybe_created=status == 504 and response.method == "POST",
                retry_after=retry_after,
                status_code=status,
            )
        return ProviderError(
            "invalid_request", f"HTTP {status}: {detail}", retryable=False, status_code=status
        )

    def submit_body(self, response: Answer) -> dict[str, Any]:
        """The JSON object of a successful submit.

        A 2xx we cannot read may still have created (and billed) a job upstream: that is
        never worth retrying, so the error says ``maybe_created`` and not ``retryable``.
        """
        try:
            return self.json_body(response)
        except ProviderError as exc:
            raise ProviderError(
                exc.code,
                exc.message,
                retryable=False,
                maybe_created=True,
                status_code=response.status_code,
            ) from exc

    @staticmethod
    def json_body(response: Answer) -> dict[str, Any]:
        """The response's JSON object, or a retryable ``upstream_invalid_response``."""
        try:
            body = response.json()
        except ValueError as exc:
            raise ProviderError(
                "upstream_invalid_response", f"not JSON: {_snippet(response)}", retryable=True
            ) from exc
        if not isinstance(body, dict):
            raise ProviderError(
                "upstream_invalid_response",
                f"expected an object: {_snippet(response)}",
                retryable=True,
            )
        return body


def _transport_error(fault: TransportError, read_timeout: float) -> ProviderError:
    """A fan-out call's transport fault, named as ``request`` names the same fault."""
    if fault.kind == "timeout":
        return ProviderError(
            "upstream_timeout", f"no answer within {read_timeout:g}s", retryable=True
        )
    return ProviderError("upstream_unavailable", str(fault), retryable=True)


def _snippet(response: Answer, limit: int = 300) -> str:
    text = response.text or ""
    return text[:limit] + ("…" if len(text) > limit else "")


def _was_sent(exc: requests.ConnectionError) -> bool:
    # urllib3 reports "connection aborted"/"reset" once the request went out; refused or
    # DNS failures mean nothing reached the upstream.
    text = str(exc).lower()
    return "aborted" in text or "reset" in text or "remote end closed" in text
