"""jobs: submit_sent_at (a submit's first byte may have left) and upstream_attempts

``submit_sent_at`` tells an interrupted submit that never reached the upstream (safe to send
again) from one that may have (never sent blindly again). ``upstream_attempts`` counts the
submits an upstream may have made, and billed, a song for.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 17:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.db

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("submit_sent_at", app.db.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(
            sa.Column("upstream_attempts", sa.Integer(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("upstream_attempts")
        batch_op.drop_column("submit_sent_at")
