"""A real Chorus web process whose keyed submits stop at one step until the process is killed.

``python -m tests.api.blocking_web STEP FLAG PORT_FILE``: serves the app configured by the
environment on a free port (written to PORT_FILE); a submit reaching STEP touches FLAG and
sleeps there for good. STEP is ``answer-stored`` (the key's answer written, not committed)
or ``committed`` (the commit done, the answer not yet sent).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from werkzeug.serving import make_server

from app.extensions import Chorus
from app.idempotency import store
from app.web import create_app


def main(step: str, flag: Path, port_file: Path) -> None:
    def stop_here() -> None:
        flag.touch()
        while True:  # until SIGKILL
            time.sleep(60)

    if step == "answer-stored":
        record = store.record

        def record_then_stop(*args: Any, **kwargs: Any) -> bool:
            record(*args, **kwargs)
            stop_here()
            return True

        store.record = record_then_stop  # type: ignore[assignment]
    elif step == "committed":
        commit = Chorus.commit

        def commit_then_stop(self: Chorus) -> None:
            commit(self)
            stop_here()

        Chorus.commit = commit_then_stop  # type: ignore[method-assign]
    else:
        raise SystemExit(f"unknown step {step!r}")
    server = make_server("127.0.0.1", 0, create_app(), threaded=True)
    port_file.write_text(str(server.server_port))
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]))
