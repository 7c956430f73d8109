"""The embedded default's filesystem broker publishes each message whole."""

from __future__ import annotations

import threading
from pathlib import Path

from kombu import Connection

from config import load_settings
from workers import make_celery
from workers.broker import Transport

MESSAGES = 300
# Large enough that writing one takes a while: the window a consumer could read it half-written.
BODY = "x" * 256_000


def test_the_embedded_default_publishes_through_it(tmp_path: Path) -> None:
    app = make_celery(load_settings({"CHORUS_VAR_DIR": str(tmp_path)}))
    with app.connection_for_write() as conn:
        assert isinstance(conn.transport, Transport)


def test_a_consumer_racing_the_producer_only_ever_reads_whole_messages(tmp_path: Path) -> None:
    options = {
        "data_folder_in": str(tmp_path),
        "data_folder_out": str(tmp_path),
        # kombu's default is ./control: the exchange's table would land in the working tree.
        "control_folder": str(tmp_path / "control"),
    }
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            with Connection(transport=Transport, transport_options=options) as conn:
                queue = conn.SimpleQueue("race")
                for i in range(MESSAGES):
                    queue.put({"i": i, "body": BODY})
                queue.close()
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    received = []
    # The consumer polls the folder as fast as it can, so it lists each file as soon as it exists.
    with Connection(
        transport=Transport, transport_options={**options, "polling_interval": 0}
    ) as conn:
        # Declared (its binding written) before the producer starts: kombu keeps bindings per
        # process, so a producer in this same process takes the queue as bound already and
        # would route its first messages by a table not yet on disk, dropping them.
        queue = conn.SimpleQueue("race")
        producer = threading.Thread(target=produce)
        producer.start()
        while len(received) < MESSAGES:
            message = queue.get(timeout=30)
            received.append(message.payload)
            message.ack()
        queue.close()
    producer.join(30)
    assert not errors, errors
    assert [m["i"] for m in received] == list(range(MESSAGES))
    assert all(m["body"] == BODY for m in received)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
