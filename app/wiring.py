"""Where the layers meet: the status writer with every side effect Chorus has.

The lifecycle (``app.jobs``) does not know who listens to its changes; the webhooks sit above
it. The writer is assembled here, for the API's process (``app.extensions``) and the workers'
(``workers.ChorusCelery``), so each hook is registered once, in one place.
"""

from __future__ import annotations

from app.db import Database
from app.doorbell import Doorbell
from app.jobs import effects, journal, previews
from app.jobs.transitions import Transitions
from app.jobs.waiting import TerminalNotifier
from app.webhooks import outbox
from config import Settings


def writer(db: Database, settings: Settings, *, bell: Doorbell | None = None) -> Transitions:
    """The status writer with every side effect: the money, the webhook event and the stored
    event (live streams) in the change's transaction; after its commit, the change counted
    (with METRICS_ENABLED), the waiting requests woken, the streams' tails told and, given a
    ``bell``,
    the scheduler told (the API's writer; the engine rings once per batch itself)."""
    transitions = Transitions(db)
    transitions.on_change(effects.settle_money)
    transitions.on_change(outbox.write_outbox)
    transitions.on_change(previews.drop_previews)
    transitions.on_change(journal.record_changes)
    if settings.metrics_enabled:
        transitions.after_commit(effects.count_changes)
    transitions.after_commit(effects.wake_waiters(TerminalNotifier(settings)))
    transitions.after_commit(effects.announce_events(TerminalNotifier(settings, journal.CHANNEL)))
    transitions.after_commit(effects.log_changes)
    if bell is not None:
        transitions.after_commit(effects.ring_doorbell(bell))
    return transitions
