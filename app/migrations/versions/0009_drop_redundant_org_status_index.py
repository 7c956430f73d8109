"""jobs: drop ix_jobs_org_status, a prefix of ix_jobs_org_status_id

Every query it served (an org's active jobs for the cap, usage by org) is served as well by
ix_jobs_org_status_id (org_id, status, id); keeping both cost every job INSERT, and every
status change, one more index entry.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04 18:00:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_org_status")


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index("ix_jobs_org_status", ["org_id", "status"], unique=False)
