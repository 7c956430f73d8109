"""What the engine knows of upstreams: each account's configuration and adapter, each model's
upstream name and expected time, and how long a call on an account may take.

Catalog rows change rarely, so each is cached for a few seconds per process; one adapter (and
so one pooled HTTP session) serves each account.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from sqlalchemy import select

from app import metrics
from app.cache import TTLCache
from app.catalog.models import Model, UpstreamAccount
from app.db import Database
from app.jobs.models import Job
from app.jobs.schedule import PollPolicy
from app.providers.base import AccountConfig, Adapter, GenerationRequest, PollResult, ProviderError
from config import Settings

SIM_PLACEHOLDER = "{sim_url}"
SIM_KEY = "chorus-sim"
OK = "ok"


@contextmanager
def measured(account_id: str, operation: str) -> Iterator[None]:
    """Time one call the engine makes to an upstream account, and count its outcome: ``ok``
    or the ProviderError's code (the adapter's reading of the answer included, not only HTTP)."""
    started = time.perf_counter()
    code = OK
    try:
        yield
    except ProviderError as exc:
        code = exc.code
        raise
    except Exception:
        # Not the upstream's answer: the call was cut short on Chorus's side (a cancel
        # before anything was sent, a fault of the worker's own).
        code = "interrupted"
        raise
    finally:
        metrics.UPSTREAM_LATENCY.labels(account_id, operation).observe(
            time.perf_counter() - started
        )
        metrics.UPSTREAM_CALLS.labels(account_id, operation, code).inc()


def count_batch(account_id: str, results: Sequence[PollResult | ProviderError]) -> None:
    """Count each answer of a batched status call (``measured`` timed the batch)."""
    for result in results:
        code = result.code if isinstance(result, ProviderError) else OK
        metrics.UPSTREAM_CALLS.labels(account_id, "poll", code).inc()


class Upstreams:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        adapter_factory: Callable[[AccountConfig], Adapter],
        lease: dt.timedelta,
    ) -> None:
        self.settings = settings
        self.db = db
        self.adapter_factory = adapter_factory
        # The shortest lease of a job step: a call on an account with a longer read timeout
        # gets a longer one (``leases``).
        self.lease = lease
        self.policy = PollPolicy(
            strategy=settings.poll_strategy,
            fixed_interval=settings.poll_fixed_interval,
            min_interval=settings.poll_min_interval,
            max_interval=settings.poll_max_interval,
        )
        self._adapters: dict[str, Adapter] = {}
        self._models: TTLCache[Model] = TTLCache(ttl=10.0)
        self._account_configs: TTLCache[AccountConfig | None] = TTLCache(ttl=5.0)
        self._lease_cache: TTLCache[dict[str, dt.timedelta]] = TTLCache(ttl=5.0)

    def poll_delay(self, job: Job, elapsed: float) -> float:
        """Seconds until the next look at a job whose generation has run ``elapsed`` seconds."""
        model = self.model(job.model_id)
        return self.policy.next_delay(elapsed, model.expected_seconds, model.expected_spread)

    def model(self, model_id: int) -> Model:
        def load() -> Model:
            with self.db.session() as session:
                model = session.get(Model, model_id)
            if model is None:
                raise LookupError(f"model {model_id} is gone")
            return model

        return self._models.get(model_id, load)

    def _lease_for(self, account: UpstreamAccount) -> dt.timedelta:
        """Long enough for one call on this account (MiniMax holds calls for minutes)."""
        read = account.read_timeout or self.settings.upstream_read_timeout
        call = self.settings.upstream_connect_timeout + read + 15
        return max(self.lease, dt.timedelta(seconds=call))

    def leases(self) -> dict[str, dt.timedelta]:
        """The lease of a call on each account whose calls outlast the shortest lease."""

        def load() -> dict[str, dt.timedelta]:
            with self.db.session() as session:
                accounts = session.scalars(
                    select(UpstreamAccount).where(UpstreamAccount.read_timeout.is_not(None))
                ).all()
            return {a.id: self._lease_for(a) for a in accounts}

        return self._lease_cache.get("leases", load)

    def job_account(self, job: Job) -> AccountConfig | None:
        """The account the job was sent to, if it was and the account still exists."""
        if not job.account_id:
            return None
        account_id = job.account_id

        def load() -> AccountConfig | None:
            with self.db.session() as session:
                account = session.get(UpstreamAccount, account_id)
            return self.config(account) if account else None

        return self._account_configs.get(account_id, load)

    def config(self, account: UpstreamAccount) -> AccountConfig:
        api_key = self.settings.credential(account.credential_env)
        if api_key is None and SIM_PLACEHOLDER in account.base_url:
            api_key = SIM_KEY  # the simulator wants some bearer key, like a real upstream
        return AccountConfig(
            id=account.id,
            provider=account.provider,
            base_url=account.base_url.replace(SIM_PLACEHOLDER, self.settings.sim_url),
            api_key=api_key,
            upstream_account=account.upstream_account,
            connect_timeout=self.settings.upstream_connect_timeout,
            read_timeout=account.read_timeout or self.settings.upstream_read_timeout,
        )

    def adapter(self, account: AccountConfig) -> Adapter:
        # One adapter (and so one pooled HTTP session) per account and process.
        adapter = self._adapters.get(account.id)
        if adapter is None or adapter.account != account:
            adapter = self._adapters[account.id] = self.adapter_factory(account)
        return adapter

    def request(self, job: Job) -> GenerationRequest:
        """What the upstream is asked to make for the job."""
        model = self.model(job.model_id)
        request = job.request or {}
        return GenerationRequest(
            upstream_model=model.upstream_model,
            prompt=request.get("prompt", ""),
            lyrics=request.get("lyrics"),
            output_format=request.get("output_format", "url"),
            audio_setting=request.get("audio_setting") or {},
            reference_audio_url=request.get("reference_audio_url"),
            is_instrumental=bool(request.get("is_instrumental")),
            lyrics_optimizer=bool(request.get("lyrics_optimizer")),
            seed=request.get("seed"),
            stream=model.stream,
        )
