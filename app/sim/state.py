"""The simulator's in-memory store: generations, the request record, config and one-shot faults.

Everything lives in one process behind one lock. Each operation under the lock is a few dict
and list updates, so a single lock keeps up with the request rate the benchmark needs while
making every read (the record, the summary) a consistent snapshot.

A generation never owns a timer or a thread: its status is a pure function of its timestamps and
the time of the GET that asks (``Generation.status_at``, ``Generation.useapi_status``). A MiniMax
call sleeps in its own request thread, never under the lock.

Per-account counters (``AccountStats``) live apart from the generations, so they stay exact when
old generations are dropped; they show in the record as ``accounts``.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from app.sim.data import (
    USEAPI_COMPLETED,
    AccountStats,
    Fault,
    FaultTarget,
    Generation,
    Kind,
    PollView,
    Protocol,
    SimConfig,
)

# Bounds that keep memory modest during long benchmarks. The request record drops its oldest
# entries first; per-generation counters live on the generation, so they stay exact even after
# the record has been trimmed.
MAX_REQUESTS = 500_000
MAX_GENERATIONS = 100_000


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
        self._accounts: dict[tuple[Protocol, str], AccountStats] = {}
        # useapi music numbers are never reused, not even across a reset: a client still
        # polling an id from before the reset must get 404, not someone else's song.
        self._music_numbers = itertools.count(1)

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

    def has_faults(self, target: FaultTarget) -> bool:
        with self._lock:
            return bool(self._faults[target])

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
            self._accounts = {}

    # -- accounts ------------------------------------------------------------------------------

    def _account(self, protocol: Protocol, account: str) -> AccountStats:
        stats = self._accounts.get((protocol, account))
        if stats is None:
            stats = self._accounts[(protocol, account)] = AccountStats(protocol, account)
        return stats

    def call_opened(self, protocol: Protocol, account: str) -> AccountStats:
        """Count a synchronous call held open on ``account``; pass the result to call_closed.

        Handing back the stats object (not a key) keeps a call that straddles a reset from
        decrementing the fresh counters.
        """
        with self._lock:
            stats = self._account(protocol, account)
            stats.open_calls += 1
            stats.max_concurrent = max(stats.max_concurrent, stats.open_calls)
            return stats

    def call_closed(self, stats: AccountStats) -> None:
        with self._lock:
            stats.open_calls -= 1

    def check_idle(self, protocol: Protocol, account: str, now: float) -> bool:
        """True when ``account`` runs nothing at ``now``; a busy answer counts as a rejection."""
        with self._lock:
            stats = self._account(protocol, account)
            if stats.running(now):
                stats.rejected_busy += 1
                return False
            return True

    def next_music_number(self) -> int:
        with self._lock:
            return next(self._music_numbers)

    # -- generations ---------------------------------------------------------------------------

    def add_generation(self, generation: Generation, *, one_at_a_time: bool = False) -> bool:
        """Store a new generation and count it against its account.

        With ``one_at_a_time`` (useapi) nothing is stored and False is returned when the account
        still runs another generation; the check and the insert happen under one lock, so two
        racing creates can never both get in.
        """
        with self._lock:
            if generation.protocol != "minimax" and generation.account is not None:
                stats = self._account(generation.protocol, generation.account)
                running = stats.running(generation.created_at)
                if one_at_a_time and running:
                    stats.rejected_busy += 1
                    return False
                ready = generation.ready_at
                heapq.heappush(stats.live, float("inf") if ready is None else ready)
                stats.max_concurrent = max(stats.max_concurrent, running + 1)
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
            return True

    def times_made(self, fingerprint: str) -> int:
        """How many generations the same request (``fingerprint``) has made so far."""
        with self._lock:
            return self._fingerprints.get(fingerprint, 0)

    def get(self, generation_id: str) -> Generation | None:
        with self._lock:
            return self._generations.get(generation_id)

    def observe_poll(
        self,
        generation_id: str,
        now: float,
        *,
        reveals_status: bool = True,
        protocol: Protocol = "aimlapi",
    ) -> PollView | None:
        """Count a GET for the generation and say what it should answer; None if unknown.

        ``reveals_status`` is False when the answer will not carry the real status (a one-shot
        ``status_word`` fault), so that GET cannot count as the client seeing "completed".
        """
        with self._lock:
            gen = self._generations.get(generation_id)
            if gen is None or gen.protocol != protocol:
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

    def observe_useapi_poll(
        self, music_id: str, now: float, *, reveals_status: bool = True
    ) -> tuple[Generation, int] | None:
        """Count a useapi status GET and say which status it answers; None if unknown.

        The generation is handed back as is: apart from the counters updated here, its fields
        never change after creation, so reading them outside the lock is safe.
        """
        with self._lock:
            gen = self._generations.get(music_id)
            if gen is None or gen.protocol != "useapi":
                return None
            gen.poll_count += 1
            status = gen.useapi_status(now)
            if (
                reveals_status
                and status == USEAPI_COMPLETED
                and gen.first_completed_seen_at is None
                and not gen.garbage
                and not gen.poll_5xx
            ):
                gen.first_completed_seen_at = now
            return gen, status

    def mark_completed_seen(self, generation_id: str, now: float) -> None:
        """Note that the client was handed the finished song (MiniMax's synchronous answer)."""
        with self._lock:
            gen = self._generations.get(generation_id)
            if gen is not None and gen.first_completed_seen_at is None:
                gen.first_completed_seen_at = now

    def running_useapi(self, music_id: str, now: float) -> Generation | None:
        """The useapi generation ``music_id`` if it is still being made at ``now``."""
        with self._lock:
            gen = self._generations.get(music_id)
            if gen is None or gen.protocol != "useapi":
                return None
            return gen if gen.ready_at is None or now < gen.ready_at else None

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
            accounts = self._account_rows()
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
        return {
            "requests": requests,
            "generations": generations,
            "counts": counts,
            "accounts": accounts,
        }

    def summary(self) -> dict[str, Any]:
        with self._lock:
            return {
                "counts": self._counts(),
                "generations": self._generation_rows(),
                "accounts": self._account_rows(),
            }

    def accounts(self) -> list[dict[str, Any]]:
        with self._lock:
            return self._account_rows()

    def _account_rows(self) -> list[dict[str, Any]]:
        now = self.clock()
        return [stats.as_dict(now) for stats in self._accounts.values()]

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
        return [g.as_row(fps.get(g.fingerprint, 1)) for g in self._generations.values()]
