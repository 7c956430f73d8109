"""A scriptable upstream for engine tests: a real ``Adapter`` subclass, no HTTP, no mocks.

A ``Script`` holds the answers for ``submit`` and ``poll`` in order. Each step is one of:

* a ``Submission`` / ``PollResult``: returned;
* an exception instance (``ProviderError``, ``RuntimeError``...): raised;
* a callable taking the call's argument (the ``GenerationRequest`` or the generation id):
  run during the call, so a test can change the world "while the upstream works"; whatever
  it returns (a Submission / PollResult) is the answer, whatever it raises is raised.

With no step left, submit answers ``Submission("gen-<n>")``, poll answers PENDING and cancel
returns nothing. Every
call is recorded (``calls``), and so is every adapter the engine asks the factory for.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from app.providers.base import (
    AccountConfig,
    Adapter,
    GenerationRequest,
    PollResult,
    PollState,
    ProviderError,
    Submission,
)

Step = Submission | PollResult | BaseException | Callable[[Any], Any]


@dataclass(frozen=True)
class Call:
    op: str  # "submit", "poll" or "cancel"
    arg: Any  # the GenerationRequest, or the generation id
    account: AccountConfig


class Script:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._steps: dict[str, deque[Step]] = {
            "submit": deque(),
            "poll": deque(),
            "cancel": deque(),
        }
        self.calls: list[Call] = []
        self.accounts: list[AccountConfig] = []
        # With ``together`` set the adapter says it polls a batch at once; each batch it was
        # asked about is recorded (its ids, in order) before its polls play one by one.
        self.together = False
        self.batches: list[list[str]] = []

    # --------------------------------------------------------------- scripting

    def on_submit(self, *steps: Step) -> Script:
        with self._lock:
            self._steps["submit"].extend(steps)
        return self

    def on_poll(self, *steps: Step) -> Script:
        with self._lock:
            self._steps["poll"].extend(steps)
        return self

    def on_cancel(self, *steps: Step) -> Script:
        with self._lock:
            self._steps["cancel"].extend(steps)
        return self

    def factory(self, account: AccountConfig) -> FakeAdapter:
        with self._lock:
            self.accounts.append(account)
        return FakeAdapter(account, self)

    # --------------------------------------------------------------- inspection

    def ops(self, op: str | None = None) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if op is None or c.op == op]

    @property
    def submits(self) -> list[Call]:
        return self.ops("submit")

    @property
    def polls(self) -> list[Call]:
        return self.ops("poll")

    @property
    def cancels(self) -> list[Call]:
        return self.ops("cancel")

    # --------------------------------------------------------------- playing

    def play(self, op: str, arg: Any, account: AccountConfig) -> Any:
        with self._lock:
            self.calls.append(Call(op, arg, account))
            count = sum(1 for c in self.calls if c.op == op)
            step: Step | None = self._steps[op].popleft() if self._steps[op] else None
        if step is None:
            if op == "cancel":
                return None
            return Submission(f"gen-{count}") if op == "submit" else PollResult(PollState.PENDING)
        if isinstance(step, BaseException):
            raise step
        if isinstance(step, Submission | PollResult):
            return step
        return step(arg)


class FakeAdapter(Adapter):
    provider: ClassVar[str] = "fake"

    def __init__(self, account: AccountConfig, script: Script) -> None:
        super().__init__(account)
        self.script = script

    def submit(self, request: GenerationRequest) -> Submission:
        answer = self.script.play("submit", request, self.account)
        assert isinstance(answer, Submission), f"scripted submit answered {answer!r}"
        return answer

    def poll(self, generation_id: str) -> PollResult:
        answer = self.script.play("poll", generation_id, self.account)
        assert isinstance(answer, PollResult), f"scripted poll answered {answer!r}"
        return answer

    @property
    def polls_together(self) -> bool:
        return self.script.together

    def poll_many(self, generation_ids: Sequence[str]) -> list[PollResult | ProviderError]:
        with self.script._lock:
            self.script.batches.append(list(generation_ids))
        return super().poll_many(generation_ids)

    def cancel(self, generation_id: str) -> None:
        self.script.play("cancel", generation_id, self.account)
