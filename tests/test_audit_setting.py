"""``DEEPHEALTH_AUDIT`` is the server's setting: serve refuses a non-boolean value; the CLI records
exactly when given ``--audit`` and says so when the variable asks otherwise."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("sqlalchemy", reason="the audit trail needs the [audit] extra")

from deephealth.audit import open_audit_log  # noqa: E402
from deephealth.cli import main  # noqa: E402


def _records() -> list[dict]:
    audit = open_audit_log()
    try:
        return audit.query(limit=1000)
    finally:
        audit.close()


@pytest.fixture()
def film(tmp_path: Path, monkeypatch) -> Path:
    """A PNG (noise: the input gate refuses it, which is recorded too), and a fresh audit trail."""
    monkeypatch.setenv("DEEPHEALTH_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("DEEPHEALTH_DATABASE_URL", raising=False)
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (256, 256), dtype=np.uint8)).save(buf, format="PNG")
    path = tmp_path / "x.png"
    path.write_bytes(buf.getvalue())
    return path


def test_cli_records_with_audit_whatever_the_variable_says(film: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("DEEPHEALTH_AUDIT", "false")
    main(["predict", str(film), "--audit"])
    err = capsys.readouterr().err
    assert "note: DEEPHEALTH_AUDIT=false is a setting of deephealth serve only; --audit records here" in err
    records = _records()
    assert len(records) == 1 and records[0]["interface"] == "cli"


def test_cli_without_audit_records_nothing_even_if_the_variable_is_true(film: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("DEEPHEALTH_AUDIT", "true")
    main(["predict", str(film)])
    err = capsys.readouterr().err
    assert "DEEPHEALTH_AUDIT" not in err
    assert _records() == []


def test_a_true_variable_with_audit_gives_no_note(film: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("DEEPHEALTH_AUDIT", "yes")
    main(["predict", str(film), "--audit"])
    assert "DEEPHEALTH_AUDIT" not in capsys.readouterr().err
    assert len(_records()) == 1


def test_serve_refuses_a_non_boolean_setting(monkeypatch, capsys) -> None:
    pytest.importorskip("fastapi", reason="deephealth serve needs the [web] extra")
    monkeypatch.setenv("DEEPHEALTH_AUDIT", "maybe")
    monkeypatch.setenv("DEEPHEALTH_LOG_LEVEL", "INFO")  # serve sets it; restored after the test
    assert main(["serve", "--port", "8799"]) == 2  # refused before the model loads or a port opens
    err = capsys.readouterr().err
    assert err.startswith("deephealth serve: bad setting DEEPHEALTH_AUDIT: Input should be a valid boolean")
