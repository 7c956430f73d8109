"""The simulator's values: a generation, a one-shot fault, the run-time config, an account's
counters, and how a request is fingerprinted. ``state`` keeps them behind its lock.

A generation's status is a pure function of its timestamps and the time of the GET that asks
(``Generation.status_at``, ``Generation.useapi_status``), so no value here owns a timer.
"""

from __future__ import annotations

import hashlib
import heapq
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

# Share of a generation's latency during which it reports "queued" before "generating".
QUEUED_SHARE = 0.1

Outcome = Literal["completed", "error", "never"]
Kind = Literal["submit", "poll", "audio", "cancel"]
FaultTarget = Literal["submit", "poll"]
Protocol = Literal["aimlapi", "minimax", "useapi"]

# useapi.net's integer statuses (3 is not documented: the simulator's "unknown status").
USEAPI_PENDING = 0
USEAPI_PROCESSING = 1
USEAPI_COMPLETED = 2
USEAPI_UNKNOWN = 3
USEAPI_MODERATED = 4


@dataclass(frozen=True)
class SimConfig:
    """Defaults applied to new generations (changed at run time with ``POST /_sim/config``)."""

    latency: float
    jitter: float
    audio_seconds: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Fault:
    """A one-shot fault, consumed by the next submit or poll.

    ``hang`` delays the answer and may be combined with the other fields; with nothing else set
    the request is then answered normally.
    """

    status: int | None = None
    body: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    hang: float = 0.0
    garbage: bool = False
    status_word: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.status is not None:
            out["status"] = self.status
        if self.body is not None:
            out["body"] = self.body
        if self.headers:
            out["headers"] = dict(self.headers)
        if self.hang:
            out["hang"] = self.hang
        if self.garbage:
            out["garbage"] = True
        if self.status_word is not None:
            out["status_word"] = self.status_word
        return out


@dataclass(slots=True)
class Generation:
    """One upstream generation as the simulator tracks it."""

    id: str
    model: str
    prompt: str
    lyrics: str | None
    auth: str | None
    created_at: float
    latency: float
    # Unix time at which the generation finishes; None when it never does ([sim:never]).
    ready_at: float | None
    outcome: Outcome
    error_name: str | None
    error_message: str | None
    audio_seconds: float
    sample_rate: int
    fingerprint: str
    # Per-generation poll behaviour requested by prompt markers.
    unknown_status: bool = False
    garbage: bool = False
    poll_5xx: bool = False
    poll_hang: float = 0.0
    poll_count: int = 0
    first_completed_seen_at: float | None = None
    protocol: Protocol = "aimlapi"
    # Whose capacity the generation uses: the bearer key, or for useapi the account key.
    account: str | None = None
    # useapi only: the song's title, and how long after completion a strike flips it to 4.
    title: str | None = None
    post_moderated: float | None = None
    # The request's options as the upstream read them (MiniMax's is_instrumental, seed, …).
    options: dict[str, Any] = field(default_factory=dict)

    def as_row(self, submit_count: int) -> dict[str, Any]:
        """The generation as the record shows it; ``submit_count`` is how many submits share
        its fingerprint."""
        return {
            "id": self.id,
            "model": self.model,
            "prompt": self.prompt,
            "auth": self.auth,
            "created_at": self.created_at,
            "ready_at": self.ready_at,
            "latency": self.latency,
            "submit_count": submit_count,
            "poll_count": self.poll_count,
            "first_completed_seen_at": self.first_completed_seen_at,
            "audio_seconds": self.audio_seconds,
            "sample_rate": self.sample_rate,
            "outcome": self.outcome,
            "protocol": self.protocol,
            "account": self.account,
            "post_moderated_at": self.post_moderated_at,
            "options": dict(self.options),
        }

    @property
    def post_moderated_at(self) -> float | None:
        """When a finished song is struck ([sim:post-moderated=S]); None if it never is."""
        if self.ready_at is None or self.post_moderated is None:
            return None
        return self.ready_at + self.post_moderated

    def audio_available(self, now: float) -> bool:
        """Whether the WAV link answers at ``now``: finished well and not struck since."""
        if self.ready_at is None or now < self.ready_at or self.outcome != "completed":
            return False
        struck = self.post_moderated_at
        return struck is None or now < struck

    def useapi_status(self, now: float) -> int:
        """The integer status useapi.net's ``GET /v1/minimax/music/<id>`` reports at ``now``."""
        if self.ready_at is not None and now >= self.ready_at:
            return USEAPI_COMPLETED if self.audio_available(now) else USEAPI_MODERATED
        if self.unknown_status:
            return USEAPI_UNKNOWN
        if now - self.created_at < QUEUED_SHARE * self.latency:
            return USEAPI_PENDING
        return USEAPI_PROCESSING

    def status_at(self, now: float) -> str:
        """The status a GET at ``now`` reports."""
        if self.ready_at is not None and now >= self.ready_at:
            return "error" if self.outcome == "error" else "completed"
        if self.unknown_status:
            return "mystery-state"
        if now - self.created_at < QUEUED_SHARE * self.latency:
            return "queued"
        return "generating"


@dataclass(frozen=True, slots=True)
class PollView:
    """What a poll needs to answer, copied under the lock so the handler can work without it."""

    id: str
    status: str
    error_name: str | None
    error_message: str | None
    garbage: bool
    poll_5xx: bool
    poll_hang: float


def fingerprint(
    model: str,
    prompt: str,
    lyrics: str | None,
    auth: str | None,
    protocol: Protocol = "aimlapi",
) -> str:
    """Identifies "the same request": resubmitting a job shows up as a shared fingerprint."""
    parts = [model, prompt, lyrics or "", auth or ""]
    if protocol != "aimlapi":
        parts.append(protocol)
    raw = "\x1f".join(parts)
    return hashlib.blake2b(raw.encode("utf-8"), digest_size=12).hexdigest()


@dataclass(slots=True)
class AccountStats:
    """Concurrency seen on one upstream account (one bearer key, or one useapi account).

    MiniMax's calls are synchronous, so its concurrency is the number of open calls
    (``open_calls``). For the submit-then-poll protocols it is the number of generations
    created and not yet finished; ``live`` is a min-heap of their ready times (``inf`` for
    ``[sim:never]``), pruned lazily, so each submit costs O(log n) even with thousands running.
    """

    protocol: Protocol
    account: str
    max_concurrent: int = 0
    rejected_busy: int = 0
    open_calls: int = 0
    live: list[float] = field(default_factory=list)

    def running(self, now: float) -> int:
        while self.live and self.live[0] <= now:
            heapq.heappop(self.live)
        return len(self.live)

    def in_flight(self, now: float) -> int:
        return self.open_calls if self.protocol == "minimax" else self.running(now)

    def as_dict(self, now: float) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "account": self.account,
            "max_concurrent": self.max_concurrent,
            "in_flight": self.in_flight(now),
            "rejected_busy": self.rejected_busy,
        }
