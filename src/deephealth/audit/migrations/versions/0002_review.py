"""Add review and review_reason: whether the prediction was flagged for a radiologist's review.

``review`` is the prediction's ``decision.review`` (the film lies in the model's review band) and
``review_reason`` its ``decision.review_reason``. Both are nullable: rows written before this
migration, and requests that made no prediction, read null.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("audit_log") as batch:
        batch.add_column(sa.Column("review", sa.Boolean(), nullable=True))
        batch.add_column(sa.Column("review_reason", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("audit_log") as batch:
        batch.drop_column("review_reason")
        batch.drop_column("review")
