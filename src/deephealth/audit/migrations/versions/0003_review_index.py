"""Index the review column: the audit API's ``review`` filter (flagged predictions) reads it.

``AuditLog.query(review=True)`` (``GET /audit?review=true``) selects the flagged predictions
among every request ever recorded; without an index that is a full scan of the trail. The index
``ix_audit_log_review`` is the one SQLAlchemy names for ``review`` with ``index=True``
(:class:`deephealth.audit.models.AuditRecord`). No data changes; downgrading drops only the index.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_audit_log_review", "audit_log", ["review"])


def downgrade() -> None:
    op.drop_index("ix_audit_log_review", table_name="audit_log")
