"""``GET /healthz``: 'degraded', with the reason, while the audit trail cannot record; HTTP 200 throughout."""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("sqlalchemy", reason="the audit trail needs the [audit] extra")
pytest.importorskip("fastapi", reason="the web tests need the [web] extra")

from fastapi.testclient import TestClient  # noqa: E402

from deephealth.audit.models import AuditRecord  # noqa: E402
from deephealth.inference import Predictor  # noqa: E402
from deephealth.web.app import create_app  # noqa: E402
from deephealth.web.routes import health_problems  # noqa: E402
from deephealth.web.settings import Settings  # noqa: E402

URL = "/api/v1/predictions"


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor()  # the bundled model


def _noise_png() -> bytes:
    """An image the input gate refuses (422): still one audit record, no dataset needed."""
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (256, 256), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_degraded_while_audit_writes_fail_and_ok_again_after(predictor: Predictor, tmp_path: Path) -> None:
    db = tmp_path / "audit.sqlite3"
    table = AuditRecord.__tablename__
    png = _noise_png()
    with TestClient(create_app(Settings(database_url=f"sqlite:///{db}"), predictor=predictor)) as c:
        r = c.get("/healthz")
        assert r.status_code == 200 and r.json()["status"] == "ok" and r.json()["problems"] == []
        assert c.post(URL, files={"file": ("noise.png", png)}).status_code == 422
        c.app.state.audit.flush()
        with sqlite3.connect(db) as con:  # the database breaks while the service runs
            con.execute(f"ALTER TABLE {table} RENAME TO moved_away")
        assert c.post(URL, files={"file": ("noise.png", png)}).status_code == 422  # still answered
        c.app.state.audit.flush()
        r = c.get("/healthz")
        assert r.status_code == 200
        health = r.json()
        assert health["status"] == "degraded"
        assert health["audit"]["written"] == 1 and health["audit"]["failures"] == 1
        assert len(health["problems"]) == 1
        assert health["problems"][0].startswith("audit trail: records cannot be written, 1 lost so far (")
        assert table in health["problems"][0]  # the database's own error names the missing table
        with sqlite3.connect(db) as con:  # repaired: the next write succeeds and clears the error
            con.execute(f"ALTER TABLE moved_away RENAME TO {table}")
        assert c.post(URL, files={"file": ("noise.png", png)}).status_code == 422
        c.app.state.audit.flush()
        health = c.get("/healthz").json()
        assert (health["status"], health["problems"]) == ("ok", [])
        assert health["audit"]["written"] == 2 and health["audit"]["failures"] == 1  # the count stays


def test_audit_switched_off_is_ok(predictor: Predictor) -> None:
    with TestClient(create_app(Settings(audit=False), predictor=predictor)) as c:
        r = c.get("/healthz")
    health = r.json()
    assert (health["status"], health["problems"], health["audit"]["enabled"]) == ("ok", [], False)
    # the README's monitoring check matches the response's bytes
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    assert "curl -fsS http://127.0.0.1:8000/healthz | grep -q '\"status\":\"ok\"'" in readme
    assert '"status":"ok"' in r.text


def test_health_problems() -> None:
    working = {"enabled": True, "written": 3, "failures": 0, "error": None}
    assert health_problems(True, working) == []
    assert health_problems(False, {"enabled": False, "error": None}) == []
    assert health_problems(True, {"enabled": False, "written": 0, "failures": 0, "error": None}) == [
        "audit trail: switched on but not available (SQLAlchemy/Alembic missing?): predictions are not recorded"]
    failing = {"enabled": True, "written": 3, "failures": 2, "error": "OperationalError: disk I/O error"}
    assert health_problems(True, failing) == [
        "audit trail: records cannot be written, 2 lost so far (OperationalError: disk I/O error)"]


def test_openapi_documents_the_degraded_status(predictor: Predictor) -> None:
    with TestClient(create_app(Settings(audit=False), predictor=predictor)) as c:
        spec = c.get("/openapi.json").json()
    health = spec["components"]["schemas"]["Health"]
    assert health["properties"]["status"]["enum"] == ["ok", "degraded"]
    assert "HTTP status stays 200" in health["properties"]["status"]["description"]
    assert health["properties"]["problems"]["type"] == "array"
    assert "degraded" in spec["paths"]["/healthz"]["get"]["description"]
