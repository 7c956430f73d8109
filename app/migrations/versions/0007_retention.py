"""retention: purged job tombstones

Revision ID: 0007
Revises: 0003
Create Date: 2026-11-21 17:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.db

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("purged_at", app.db.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.create_index("ix_jobs_purge", ["purged_at", "created_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_purge")
        batch_op.drop_column("purged_at")
