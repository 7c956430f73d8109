"""The ids a log line about a job carries (``config.logs``): the job, its org, its upstream
account and generation, where known.

A worker binds them for each step it takes on a job (``about``), so every line written during
the step, by Chorus or by a library, says which job it is about.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

from app.jobs.models import Job
from config import logs


def job_fields(job: Job) -> dict[str, Any]:
    fields = {
        "job_id": job.id,
        "org_id": job.org_id,
        "account": job.account_id,
        "generation_id": job.generation_id,
    }
    return {name: value for name, value in fields.items() if value is not None}


def about(job: Job) -> AbstractContextManager[None]:
    """Lines written in this block carry ``job``'s ids."""
    return logs.bound(**job_fields(job))
