"""jobs: cancel_after_at (the client's own deadline) and the indexes of queue positions

``cancel_after_at`` is the deadline a client set with ``Cancel-After`` or ``cancel_after``:
past it the job ends FAILED ``cancel_after_elapsed``. The deadline sweep finds such jobs
through ``ix_jobs_cancel_after``, which holds only the rows that have one.

A queued job's position is a count of the QUEUED jobs ahead of it on its account (or, before
one is chosen, its model), read on every GET of a queued job: the two partial indexes hold
only QUEUED rows, so they stay as small as the queue however many jobs have ended.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07 21:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.db

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

QUEUED = sa.text("status = 'QUEUED'")


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("cancel_after_at", app.db.UTCDateTime(timezone=True), nullable=True)
        )
    op.create_index(
        "ix_jobs_cancel_after",
        "jobs",
        ["status", "cancel_after_at"],
        postgresql_where=sa.text("cancel_after_at IS NOT NULL"),
    )
    op.create_index("ix_jobs_queued_model", "jobs", ["model_id", "id"], postgresql_where=QUEUED)
    op.create_index("ix_jobs_queued_account", "jobs", ["account_id", "id"], postgresql_where=QUEUED)


def downgrade() -> None:
    op.drop_index("ix_jobs_queued_account", table_name="jobs")
    op.drop_index("ix_jobs_queued_model", table_name="jobs")
    op.drop_index("ix_jobs_cancel_after", table_name="jobs")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("cancel_after_at")
