"""Create the audit_log table.

Revision ID: 0001
Revises:
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("interface", sa.String(16), nullable=False),
        sa.Column("client", sa.String(255), nullable=True),
        sa.Column("input_sha256", sa.String(64), nullable=True),
        sa.Column("input_format", sa.String(16), nullable=True),
        sa.Column("input_bytes", sa.Integer(), nullable=True),
        sa.Column("model_name", sa.String(128), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("model_sha256", sa.String(64), nullable=False),
        sa.Column("label", sa.String(16), nullable=True),
        sa.Column("probabilities", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("gate", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=False),
    )
    op.create_index("ix_audit_log_created_at", "audit_log", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_audit_log_created_at", table_name="audit_log")
    op.drop_table("audit_log")
