"""``chorus-client``: submit, follow, read, cancel and download Chorus jobs from a shell.

Results (a job as JSON, a saved path) go to stdout; progress lines and errors to stderr, so
the output can be piped. Exit codes: 0 ok, 1 the job failed or was cancelled, 2 a usage
error, 3 an API error (or no connection).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from chorus_client.client import EVENT_PREFIX, TERMINAL, Client, check_ended
from chorus_client.errors import ChorusError, JobFailed
from chorus_client.sse import Event

OK, JOB_FAILED, USAGE, API_ERROR = 0, 1, 2, 3


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="chorus-client", description="A client for Chorus.")
    top.add_argument(
        "--base-url",
        default=os.environ.get("CHORUS_BASE_URL"),
        help="the API's address (default: $CHORUS_BASE_URL)",
    )
    top.add_argument(
        "--api-key",
        default=os.environ.get("CHORUS_API_KEY"),
        help="the API key (default: $CHORUS_API_KEY)",
    )
    top.add_argument("--timeout", type=float, default=30.0, help="seconds per HTTP request")
    commands = top.add_subparsers(dest="command", required=True)

    gen = commands.add_parser("generate", help="submit a job; with --wait, follow it to its end")
    gen.add_argument("--model", required=True)
    gen.add_argument("--prompt", required=True)
    words = gen.add_mutually_exclusive_group()
    words.add_argument("--lyrics", help="the lyrics (\\n between lines)")
    words.add_argument("--lyrics-file", help="a file holding the lyrics ('-': stdin)")
    gen.add_argument("--category", default="music_gen", help="the catalog category (catelogid)")
    gen.add_argument("--format", choices=["mp3", "wav", "pcm"], help="audio_setting.format")
    gen.add_argument("--idempotency-key", help="default: a fresh one")
    gen.add_argument("--wait", action="store_true", help="follow the job until it ends")
    gen.add_argument("-o", "--output", help="save the track here (implies --wait)")

    for name, text in (("get", "print a job"), ("cancel", "cancel a queued or running job")):
        command = commands.add_parser(name, help=text)
        command.add_argument("id")

    down = commands.add_parser("download", help="save a finished job's audio")
    down.add_argument("id")
    down.add_argument("-o", "--output", required=True)

    jobs = commands.add_parser("list", help="the newest jobs")
    jobs.add_argument("--status", choices=sorted(TERMINAL | {"QUEUED", "RUNNING"}))
    jobs.add_argument("--limit", type=int, default=20)

    commands.add_parser("models", help="the models this key may use")
    commands.add_parser("balance", help="the org's balance per currency")
    return top


def main(argv: Sequence[str] | None = None) -> int:
    cli = parser()
    args = cli.parse_args(argv)
    if not args.base_url or not args.api_key:
        cli.error("--base-url and --api-key (or CHORUS_BASE_URL and CHORUS_API_KEY) are needed")
    lyrics = args.lyrics if args.command == "generate" else None
    if args.command == "generate" and args.lyrics_file:
        try:
            lyrics = _read(args.lyrics_file)
        except OSError as exc:
            cli.error(f"--lyrics-file: {exc}")
    try:
        with Client(args.base_url, args.api_key, timeout=args.timeout) as client:
            return run(client, args, lyrics)
    except JobFailed as exc:
        print(f"error: job {exc.job.get('id')} {exc.job.get('status')}: {exc}", file=sys.stderr)
        return JOB_FAILED
    except ChorusError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return API_ERROR
    except KeyboardInterrupt:
        return 130


def _read(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    with open(path, encoding="utf-8") as f:
        return f.read()


def run(client: Client, args: argparse.Namespace, lyrics: str | None) -> int:
    if args.command == "generate":
        return generate(client, args, lyrics)
    if args.command == "get":
        _print(client.get(args.id))
    elif args.command == "cancel":
        _print(client.cancel(args.id))
    elif args.command == "download":
        saved = client.download(args.id, args.output)
        print(saved)
    elif args.command == "list":
        for job in client.list(limit=args.limit, status=args.status)["data"]:
            print(f"{job['id']}  {job['status']:<9}  {job['model']}")
    elif args.command == "models":
        _print(client.models())
    elif args.command == "balance":
        _print(client.balance())
    return OK


def generate(client: Client, args: argparse.Namespace, lyrics: str | None) -> int:
    extra: dict[str, Any] = {}
    if args.format:
        extra["audio_setting"] = {"format": args.format}
    job = client.generate(
        args.model,
        args.prompt,
        lyrics,
        idempotency_key=args.idempotency_key,
        catelogid=args.category,
        **extra,
    )
    if not (args.wait or args.output):
        _print(job)
        return OK
    progress = Progress()
    progress.line(job["id"], job["status"], job)
    for event in client.events(job["id"]):
        progress.event(event)
    job = check_ended(client.get(job["id"]))  # the final job, with a freshly signed link
    if args.output:
        saved = client.download(job, args.output)
        info = job.get("audio_info") or {}
        print(
            f"saved {saved} ({saved.stat().st_size} bytes, {info.get('format')})", file=sys.stderr
        )
    _print(job)
    return OK


class Progress:
    """Prints one line to stderr per change: the status, and how far along the job is when
    Chorus says (``progress``, ``eta``, ``queue_position``)."""

    def __init__(self) -> None:
        self.last = ""

    def event(self, event: Event) -> None:
        data = event.data if isinstance(event.data, dict) else {}
        if event.type == "progress":
            self.line(str(data.get("id")), "RUNNING", data)
        elif event.type.startswith(EVENT_PREFIX):
            self.line(str(data.get("id")), event.type.removeprefix(EVENT_PREFIX).upper(), data)

    def line(self, job_id: str, status: str, data: dict[str, Any]) -> None:
        parts = [job_id, status]
        if status == "RUNNING" and data.get("progress") is not None:
            parts.append(f"{float(data['progress']):.0%}")
            if data.get("eta"):
                parts.append(f"eta {max(float(data['eta']) - time.time(), 0):.0f}s")
        if status == "QUEUED" and data.get("queue_position") is not None:
            parts.append(f"position {data['queue_position']}")
        line = "  ".join(parts)
        if line != self.last:
            self.last = line
            print(line, file=sys.stderr, flush=True)


def _print(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))
