"""One protocol request from its arrival to its entry in the record, as every protocol
handles it: the one-shot faults, the markers' failures and hangs, then the answer recorded.

A protocol module keeps only what differs: its paths, its bodies and its error shapes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from flask import Response, request

from app.sim.common import ErrorFactory, Markers, apply_fault, bearer, json_body
from app.sim.data import Kind
from app.sim.state import SimState

# The markers that fail a submit at once, and the HTTP status each answers with (in this
# order when a prompt carries more than one): nothing is made upstream.
SUBMIT_FAILURES = (("submit-5xx", 503), ("submit-401", 401), ("submit-429", 429))


@dataclass(frozen=True)
class Call:
    """A request being answered, with what its record entry says: when it arrived, where,
    with which key, and (for a submit) its prompt."""

    state: SimState
    kind: Kind
    path: str
    at: float
    auth: str | None
    prompt: str | None = None
    generation_id: str | None = None

    def done(self, resp: Response, generation_id: str | None = None) -> Response:
        """Record the answer (for ``generation_id``, else the call's own) and hand it back."""
        self.state.record_request(
            at=self.at,
            method=request.method,
            path=self.path,
            kind=self.kind,
            generation_id=self.generation_id if generation_id is None else generation_id,
            status_code=resp.status_code,
            auth=self.auth,
            prompt=self.prompt,
        )
        return resp

    def done_late(self, resp: Response, generation_id: str, hang: float) -> Response:
        """Record the answer, then hold it ``hang`` seconds ([sim:submit-hang=S]): the
        generation already exists upstream, and the slow answer provokes a client read
        timeout."""
        self.done(resp, generation_id)
        if hang > 0:
            time.sleep(hang)
        return resp

    def submit_fault(self, error: ErrorFactory) -> Response | None:
        """The next one-shot submit fault's answer, recorded; None when none is queued or it
        only delays. Such faults hit before the upstream looks at the request: nothing is made.
        """
        fault = self.state.take_fault("submit")
        resp = apply_fault(fault, error) if fault is not None else None
        return None if resp is None else self.done(resp)

    def poll_fault(self, error: ErrorFactory) -> tuple[Response | None, str | None]:
        """The next one-shot poll fault's answer, recorded (the GET still counts for its
        generation); else None, with the status word the fault puts in the answer, if any."""
        fault = self.state.take_fault("poll")
        if fault is None:
            return None, None
        resp = apply_fault(fault, error)
        if resp is None:
            return None, fault.status_word
        if self.generation_id is not None:
            self.state.count_poll(self.generation_id)
        return self.done(resp), None

    def poll_hang(self) -> None:
        """Hold a poll for its generation's [sim:poll-hang=S]; the status is read afterwards,
        as that is when the answer leaves."""
        known = self.state.get(self.generation_id) if self.generation_id is not None else None
        if known is not None and known.poll_hang > 0:
            time.sleep(known.poll_hang)


def submit_call(state: SimState, path: str) -> tuple[Call, Any]:
    """A submit arriving now on ``path``, and its JSON body (None if it is not JSON)."""
    at, auth = state.clock(), bearer()
    data, prompt = json_body()
    return Call(state, "submit", path, at, auth, prompt=prompt), data


def poll_call(state: SimState, path: str, generation_id: str | None) -> Call:
    """A status GET for ``generation_id`` arriving now, recorded under ``path``."""
    return Call(state, "poll", path, state.clock(), bearer(), generation_id=generation_id)


def marked_failure(markers: Markers) -> int | None:
    """The HTTP status of the first submit-failing marker in the prompt, if any."""
    return next((code for flag, code in SUBMIT_FAILURES if flag in markers.flags), None)
