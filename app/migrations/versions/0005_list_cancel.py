"""list and cancel: the job list's index, and following a cancelled job's upstream

Revision ID: 0005
Revises: 0003
Create Date: 2026-11-28 10:12:41.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("upstream_followup", sa.String(length=16), nullable=True))
        batch_op.create_index("ix_jobs_org_status_id", ["org_id", "status", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_org_status_id")
        batch_op.drop_column("upstream_followup")
