"""The simulator's in-memory store: generations, the request record, config and one-shot faults.

Everything lives in one process behind one lock. Each operation under the lock is a few dict
and list updates, so a single lock keeps up with the request rate the benchmark needs while
making every read (the record, the summary) a consistent snapshot.

A generation never owns a timer or a thread: its status is a pure function of its timestamps and
the time of the GET that asks (``Generation.status_at``).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

# Bounds that keep memory modest during long benchmarks. The request record drops its oldest
# entries first; per-generation counters live on the generation, so they stay exact even after
# the record has been trimmed.
MAX_REQUESTS = 500_000
MAX_GENERATIONS = 100_000

# Share of a generation's latency during which it reports "queued" before "generating".
QUEUED_SHARE = 0.1

Outcome = Literal["completed", "error", "never"]
Kind = Literal["submit", "poll", "audio"]
FaultTarget = Literal["submit", "poll"]


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


def fingerprint(model: str, prompt: str, lyrics: str | None, auth: str | None) -> str:
    """Identifies "the same request": resubmitting a job shows up as a shared fingerprint."""
    raw = "\x1f".join((model, prompt, lyrics or "", auth or ""))
    return hashlib.blake2b(raw.encode("utf-8"), digest_size=12).hexdigest()


# One record entry: (seq, at, method, path, kind, generation_id, status_code, auth, prompt).
# A tuple instead of a dict or dataclass keeps 500,000 entries to a modest footprint.
_Entry = tuple[int, float, str, str, str, str | None, int, str | None, str | None]


class SimState:
    """Thread-safe store shared by every request handler of one simulator app."""

    def __init__(
        self,
        defaults: SimConfig,
        *,
        max_requests: int = MAX_REQUESTS,
        max_generations: int = MAX_GENERATIONS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._defaults = defaults
        self._max_requests = max_requests
        self._max_generations = max_generations
        self.clock = clock
        self._lock = threading.Lock()
        self._config = defaults
        self._generations: dict[str, Generation] = {}
        self._fingerprints: dict[str, int] = {}
        self._faults: dict[FaultTarget, list[Fault]] = {"submit": [], "poll": []}
        self._requests: list[_Entry] = []
        self._seq = 0
        self._kind_counts: dict[str, int] = {}
        self._code_counts: dict[int, int] = {}

    # -- config and faults ---------------------------------------------------------------------

    @property
    def config(self) -> SimConfig:
        with self._lock:
            return self._config

    def set_config(self, config: SimConfig) -> None:
        with self._lock:
            self._config = config

    def add_faults(self, target: FaultTarget, faults: Iterable[Fault]) -> None:
        with self._lock:
            self._faults[target].extend(faults)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults = {"submit": [], "poll": []}

    def pending_faults(self) -> dict[str, list[dict[str, Any]]]:
        with self._lock:
            return {k: [f.as_dict() for f in v] for k, v in self._faults.items()}

    def take_fault(self, target: FaultTarget) -> Fault | None:
        """The next queued fault for ``target``, removed so that it fires exactly once."""
        with self._lock:
            queue = self._faults[target]
            return queue.pop(0) if queue else None

    def reset(self) -> None:
        """Forget everything and go back to the defaults the app was started with."""
        with self._lock:
            self._config = self._defaults
            self._generations = {}
            self._fingerprints = {}
            self._faults = {"submit": [], "poll": []}
            self._requests = []
            self._seq = 0
            self._kind_counts = {}
            self._code_counts = {}

    # -- generations ---------------------------------------------------------------------------

    def add_generation(self, generation: Generation) -> None:
        with self._lock:
            self._generations[generation.id] = generation
            fp = generation.fingerprint
            self._fingerprints[fp] = self._fingerprints.get(fp, 0) + 1
            if len(self._generations) > self._max_generations:
                # Dicts keep insertion order, so the first key is the oldest generation.
                oldest = self._generations.pop(next(iter(self._generations)))
                left = self._fingerprints.get(oldest.fingerprint, 1) - 1
                if left > 0:
                    self._fingerprints[oldest.fingerprint] = left
                else:
                    self._fingerprints.pop(oldest.fingerprint, None)

    def get(self, generation_id: str) -> Generation | None:
        with self._lock:
            return self._generations.get(generation_id)

    def observe_poll(
        self, generation_id: str, now: float, *, reveals_status: bool = True
    ) -> PollView | None:
        """Count a GET for the generation and say what it should answer; None if unknown.

        ``reveals_status`` is False when the answer will not carry the real status (a one-shot
        ``status_word`` fault), so that GET cannot count as the client seeing "completed".
        """
        with self._lock:
            gen = self._generations.get(generation_id)
            if gen is None:
                return None
            gen.poll_count += 1
            status = gen.status_at(now)
            # Only a GET that really answers "completed" counts as the client having seen it;
            # garbage and 5xx answers hide the status.
            if (
                reveals_status
                and status == "completed"
                and gen.first_completed_seen_at is None
                and not gen.garbage
                and not gen.poll_5xx
            ):
                gen.first_completed_seen_at = now
            return PollView(
                id=gen.id,
                status=status,
                error_name=gen.error_name,
                error_message=gen.error_message,
                garbage=gen.garbage,
                poll_5xx=gen.poll_5xx,
                poll_hang=gen.poll_hang,
            )

    def count_poll(self, generation_id: str) -> None:
        """Count a GET answered before the status was looked at (a one-shot fault)."""
        with self._lock:
            gen = self._generations.get(generation_id)
            if gen is not None:
                gen.poll_count += 1

    # -- request record ------------------------------------------------------------------------

    def record_request(
        self,
        *,
        at: float,
        method: str,
        path: str,
        kind: Kind,
        generation_id: str | None,
        status_code: int,
        auth: str | None,
        prompt: str | None = None,
    ) -> int:
        """Append one protocol request; ``prompt`` is kept for submits, including failed ones,
        so a resubmission shows up even when it created nothing."""
        with self._lock:
            self._seq += 1
            self._requests.append(
                (self._seq, at, method, path, kind, generation_id, status_code, auth, prompt)
            )
            if len(self._requests) > self._max_requests:
                # Trim a tenth at once so that trimming stays amortised O(1) per request.
                del self._requests[: max(1, self._max_requests // 10)]
            self._kind_counts[kind] = self._kind_counts.get(kind, 0) + 1
            self._code_counts[status_code] = self._code_counts.get(status_code, 0) + 1
            return self._seq

    def record(self, since: int = 0) -> dict[str, Any]:
        """Requests newer than ``since`` plus every generation, as ``GET /_sim/record`` shows."""
        with self._lock:
            entries = self._requests
            # Sequence numbers are consecutive, so the first wanted entry is found by arithmetic.
            start = 0
            if entries and since >= entries[0][0]:
                start = since - entries[0][0] + 1
            picked = entries[start:]
            generations = self._generation_rows()
            counts = self._counts()
        requests = [
            {
                "seq": e[0],
                "at": e[1],
                "method": e[2],
                "path": e[3],
                "kind": e[4],
                "generation_id": e[5],
                "status_code": e[6],
                "auth": e[7],
                "prompt": e[8],
            }
            for e in picked
        ]
        return {"requests": requests, "generations": generations, "counts": counts}

    def summary(self) -> dict[str, Any]:
        with self._lock:
            return {"counts": self._counts(), "generations": self._generation_rows()}

    def _counts(self) -> dict[str, Any]:
        now = self.clock()
        outcomes: dict[str, int] = {}
        in_flight = 0
        for gen in self._generations.values():
            outcomes[gen.outcome] = outcomes.get(gen.outcome, 0) + 1
            if gen.ready_at is None or gen.ready_at > now:
                in_flight += 1
        return {
            "requests": self._seq,
            "recorded": len(self._requests),
            "last_seq": self._seq,
            "by_kind": dict(self._kind_counts),
            "by_status_code": {str(k): v for k, v in sorted(self._code_counts.items())},
            "generations": len(self._generations),
            "in_flight": in_flight,
            "outcomes": outcomes,
        }

    def _generation_rows(self) -> list[dict[str, Any]]:
        fps = self._fingerprints
        return [
            {
                "id": g.id,
                "model": g.model,
                "prompt": g.prompt,
                "auth": g.auth,
                "created_at": g.created_at,
                "ready_at": g.ready_at,
                "latency": g.latency,
                "submit_count": fps.get(g.fingerprint, 1),
                "poll_count": g.poll_count,
                "first_completed_seen_at": g.first_completed_seen_at,
                "audio_seconds": g.audio_seconds,
                "sample_rate": g.sample_rate,
                "outcome": g.outcome,
            }
            for g in self._generations.values()
        ]
