"""The ``--audit`` option shared by ``deephealth predict`` and ``deephealth pacs``."""

from __future__ import annotations

import os
import sys

# What pydantic reads as true for the server's DEEPHEALTH_AUDIT.
_TRUE = {"1", "true", "t", "yes", "y", "on"}


def open_for_cli(enabled: bool):
    """``(audit, ok)``: the :class:`deephealth.audit.AuditLog` when ``enabled`` (``--audit``), else ``None``;
    ``ok`` is ``False`` after printing why it cannot be used (SQLAlchemy/Alembic missing): exit 2.

    ``DEEPHEALTH_AUDIT`` is not read (it is the server's setting): ``--audit`` decides; when that
    variable is set to anything but a true value, a note on stderr says so.

    A database that cannot be reached is not refused here: the log counts the lost records and the
    command reports them at the end (see :func:`close_for_cli`).
    """
    if not enabled:
        return None, True
    setting = os.environ.get("DEEPHEALTH_AUDIT")
    if setting is not None and setting.strip().lower() not in _TRUE:
        print(f"note: DEEPHEALTH_AUDIT={setting} is a setting of deephealth serve only; --audit records here",
              file=sys.stderr)
    from deephealth.audit import open_audit_log

    audit = open_audit_log()
    if audit is None:
        print("--audit needs SQLAlchemy and Alembic: pip install 'deephealth[audit]'", file=sys.stderr)
    return audit, audit is not None


def close_for_cli(audit) -> None:
    """Write what is queued and say on stderr how many records were lost, if any."""
    audit.close()
    if audit.failures:
        print(f"warning: {audit.failures} audit record(s) could not be written ({audit.error})", file=sys.stderr)
