"""A minimal Chorus webhook receiver: checks each delivery's signature and prints its event.

    CHORUS_WEBHOOK_SECRET=whsec_... python webhook_receiver.py [--port 9000]

Point a job's ``callback_url`` (or the org's endpoint) at ``http://HOST:PORT/``. A delivery
that verifies answers 204 and prints one JSON line (``webhook_id``, ``type``, job ``id`` and
``status``); one that does not answers 400 and prints the reason to stderr. Chorus delivers
at least once: the same ``webhook-id`` may come twice, and a receiver should act on it once.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from chorus_client import WebhookVerificationError, verify_webhook

MAX_BODY = 4 * 1024 * 1024  # a job object is a few kilobytes


class Receiver(BaseHTTPRequestHandler):
    secret = ""

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 < length <= MAX_BODY:
            self._answer(400)
            return
        body = self.rfile.read(length)
        try:
            event = verify_webhook(body, dict(self.headers.items()), self.secret)
        except WebhookVerificationError as exc:
            print(f"refused: {exc}", file=sys.stderr, flush=True)
            self._answer(400)
            return
        job = event.get("data") or {}
        line = {
            "webhook_id": self.headers.get("webhook-id"),
            "type": event.get("type"),
            "id": job.get("id"),
            "status": job.get("status"),
        }
        print(json.dumps(line), flush=True)
        self._answer(204)

    def _answer(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass  # one line per event on stdout is the output; no access log beside it


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    cli.add_argument("--host", default="127.0.0.1")
    cli.add_argument("--port", type=int, default=9000)
    args = cli.parse_args()
    secret = os.environ.get("CHORUS_WEBHOOK_SECRET")
    if not secret:
        cli.error("set CHORUS_WEBHOOK_SECRET to the org's whsec_ secret")
    Receiver.secret = secret
    server = ThreadingHTTPServer((args.host, args.port), Receiver)
    print(f"listening on http://{args.host}:{server.server_port}/", file=sys.stderr, flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


if __name__ == "__main__":
    main()
