"""Add study_instance_uid, sop_instance_uid and reason: trace a record to its DICOM instance, and say why
a request was not answered.

``study_instance_uid`` and ``sop_instance_uid`` are the input's Study and SOP Instance UIDs (0020,000D)
and (0008,0018) when the input is DICOM (``deephealth pacs``, ``deephealth predict``, an upload): an
administrator finds the instance in the PACS from the record. ``reason`` is the one-line message the
user got when the request was not answered (unreadable file, refused by the input gate, PACS error),
in English, without the file's name. ``study_instance_uid`` is indexed (``ix_audit_log_study_instance_uid``,
the name SQLAlchemy gives ``index=True``) for the audit API's ``study_uid`` filter. All three are nullable: rows written before this migration,
non-DICOM inputs and answered requests read null. No data changes; downgrading drops the index and the
three columns and keeps the rows.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("audit_log") as batch:
        batch.add_column(sa.Column("study_instance_uid", sa.String(64), nullable=True))
        batch.add_column(sa.Column("sop_instance_uid", sa.String(64), nullable=True))
        batch.add_column(sa.Column("reason", sa.Text(), nullable=True))
    op.create_index("ix_audit_log_study_instance_uid", "audit_log", ["study_instance_uid"])


def downgrade() -> None:
    op.drop_index("ix_audit_log_study_instance_uid", table_name="audit_log")
    with op.batch_alter_table("audit_log") as batch:
        batch.drop_column("reason")
        batch.drop_column("sop_instance_uid")
        batch.drop_column("study_instance_uid")
