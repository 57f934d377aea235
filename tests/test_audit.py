"""The audit trail: what is recorded, the admin-only API, migrations, and a failing database."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import io

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("sqlalchemy", reason="the audit trail needs the [audit] extra")
pytest.importorskip("fastapi", reason="the web tests need the [web] extra")

from fastapi.testclient import TestClient  # noqa: E402

from deephealth.audit import AuditLog, database_url, redact_url, upgrade_database  # noqa: E402
from deephealth.cli import main  # noqa: E402
from deephealth.inference import Predictor  # noqa: E402
from deephealth.web.app import create_app  # noqa: E402
from deephealth.web.settings import Settings  # noqa: E402

URL = "/api/v1/predictions"
KEY = "s3cret-admin-key"


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor()  # the bundled model (no PyTorch needed)


@pytest.fixture()
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'audit.sqlite3'}"


@pytest.fixture()
def client(predictor: Predictor, db_url: str) -> Iterator[TestClient]:
    app = create_app(Settings(database_url=db_url, admin_api_key=KEY), predictor=predictor)
    with TestClient(app) as c:
        yield c


def _rows(db_url: str) -> list[dict]:
    con = sqlite3.connect(db_url[len("sqlite:///"):])
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute("SELECT * FROM audit_log ORDER BY id")]
    finally:
        con.close()


def _audit(client: TestClient, **params) -> dict:
    r = client.get("/api/v1/audit", params=params, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.needs_data
def test_every_request_is_recorded_without_pixels_or_names(client, db_url, dataset_root: Path, dicom_dir: Path):
    jpeg = sorted((dataset_root / "test" / "NORMAL").glob("*.jpeg"))[0]
    data = jpeg.read_bytes()
    ok = client.post(URL, files={"file": ("Garcia_Lopez_Maria.jpeg", data)},
                     headers={"X-DeepHealth-Interface": "page"})
    assert ok.status_code == 200
    bad = client.post(URL, files={"file": ("notes.txt", b"hello, not an image")})
    assert bad.status_code == 415
    ct = client.post(URL, files={"file": ("ct.dcm", (dicom_dir / "ct_small.dcm").read_bytes())})
    assert ct.status_code == 422

    records = _audit(client)["records"]
    assert len(records) == 3
    first, second, third = records
    body = ok.json()
    assert first["interface"] == "page" and first["client"] == "testclient"
    assert first["input_sha256"] == hashlib.sha256(data).hexdigest() and first["input_bytes"] == len(data)
    assert first["input_format"] == "JPEG" and first["status_code"] == 200
    assert first["label"] == body["label"]
    assert first["probabilities"] == pytest.approx(body["probabilities"], abs=1e-12)
    assert first["model_name"] == body["model"]["name"] and first["model_sha256"] == body["model"]["sha256"]
    assert first["gate"] == body["suitability"] and first["gate"]["status"] in {"accept", "warn", "unavailable"}
    assert 0 < first["latency_ms"] < 60_000
    assert second["status_code"] == 415 and second["label"] is None and second["interface"] == "api"
    assert second["input_sha256"] == hashlib.sha256(b"hello, not an image").hexdigest()
    assert third["status_code"] == 422 and third["input_format"] == "DICOM"
    # Nothing identifying: the file names (here a patient's name) are stored nowhere.
    raw = json.dumps(_rows(db_url))
    assert "Garcia" not in raw and "notes.txt" not in raw and "ct.dcm" not in raw
    assert dt.datetime.fromisoformat(first["created_at"]).tzinfo is not None


@pytest.mark.needs_data
def test_audit_api_since_and_limit(client, dataset_root: Path):
    files = sorted((dataset_root / "test" / "NORMAL").glob("*.jpeg"))[:3]
    for f in files:
        assert client.post(URL, files={"file": (f.name, f.read_bytes())}).status_code == 200
    records = _audit(client)["records"]
    assert len(records) == 3
    assert [r["input_sha256"] for r in records] == [hashlib.sha256(f.read_bytes()).hexdigest() for f in files]
    assert _audit(client, limit=2)["count"] == 2
    since = records[1]["created_at"]
    assert [r["id"] for r in _audit(client, since=since)["records"]] == [records[1]["id"], records[2]["id"]]
    future = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)).isoformat()
    assert _audit(client, since=future)["records"] == []


def test_audit_api_is_off_without_a_key_and_needs_the_right_key(predictor, db_url):
    with TestClient(create_app(Settings(database_url=db_url), predictor=predictor)) as c:
        r = c.get("/api/v1/audit")
        assert r.status_code == 404 and "DEEPHEALTH_ADMIN_API_KEY" in r.json()["detail"]
        r = c.get("/api/v1/audit", headers={"Accept-Language": "es"})
        assert r.status_code == 404 and "desactivada" in r.json()["detail"]
    with TestClient(create_app(Settings(database_url=db_url, admin_api_key=KEY), predictor=predictor)) as c:
        assert c.get("/api/v1/audit").status_code == 401
        assert c.get("/api/v1/audit", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/api/v1/audit", headers={"X-API-Key": KEY}).status_code == 200
        assert c.get("/api/v1/audit", params={"limit": 0}, headers={"X-API-Key": KEY}).status_code == 422


@pytest.mark.needs_data
def test_a_failing_database_never_fails_the_prediction(predictor, tmp_path: Path, dataset_root: Path, caplog):
    db = tmp_path / "audit.sqlite3"
    url = f"sqlite:///{db}"
    jpeg = sorted((dataset_root / "test" / "NORMAL").glob("*.jpeg"))[0]
    with TestClient(create_app(Settings(database_url=url), predictor=predictor)) as c:
        assert c.post(URL, files={"file": (jpeg.name, jpeg.read_bytes())}).status_code == 200
        c.app.state.audit.flush()
        con = sqlite3.connect(db)
        con.execute("DROP TABLE audit_log")  # the database breaks while the service runs
        con.commit()
        con.close()
        r = c.post(URL, files={"file": (jpeg.name, jpeg.read_bytes())})
        assert r.status_code == 200 and r.json()["label"] in {"normal", "bacterial", "viral"}
        c.app.state.audit.flush()
        audit = c.get("/healthz").json()["audit"]
        assert audit["written"] == 1 and audit["failures"] == 1 and "audit_log" in audit["error"]
    assert any("not written" in rec.getMessage() for rec in caplog.records)


@pytest.mark.needs_data
def test_an_unreachable_database_at_start_up_is_counted(predictor, dataset_root: Path):
    url = "postgresql+psycopg://user:pw@127.0.0.1:9/none"  # no driver or no server: either way unusable
    jpeg = sorted((dataset_root / "test" / "NORMAL").glob("*.jpeg"))[0]
    with TestClient(create_app(Settings(database_url=url), predictor=predictor)) as c:
        assert c.post(URL, files={"file": (jpeg.name, jpeg.read_bytes())}).status_code == 200
        c.app.state.audit.flush()
        audit = c.get("/healthz").json()["audit"]
        assert audit["failures"] == 1 and audit["error"] and "pw" not in audit["database"]


def test_migrations_create_the_schema_and_downgrade(tmp_path: Path):
    from alembic import command
    from alembic.config import Config
    from importlib import resources
    from sqlalchemy import create_engine, inspect

    engine = create_engine(f"sqlite:///{tmp_path / 'm.sqlite3'}")
    upgrade_database(engine)
    upgrade_database(engine)  # idempotent
    cols = {c["name"] for c in inspect(engine).get_columns("audit_log")}
    assert cols == {"id", "created_at", "interface", "client", "input_sha256", "input_format", "input_bytes",
                    "model_name", "model_version", "model_sha256", "label", "probabilities", "gate",
                    "review", "review_reason", "latency_ms", "status_code",
                    "study_instance_uid", "sop_instance_uid", "reason"}
    cfg = Config()
    cfg.set_main_option("script_location", str(resources.files("deephealth.audit") / "migrations"))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "base")
    assert "audit_log" not in inspect(engine).get_table_names()


def test_default_database_is_sqlite_in_the_state_folder(monkeypatch, tmp_path: Path):
    monkeypatch.delenv("DEEPHEALTH_DATABASE_URL", raising=False)
    monkeypatch.setenv("DEEPHEALTH_STATE_DIR", str(tmp_path / "st"))
    assert database_url() == f"sqlite:///{tmp_path / 'st' / 'audit.sqlite3'}"
    monkeypatch.setenv("DEEPHEALTH_DATABASE_URL", "postgresql+psycopg://dh:pw@db.hospital/deephealth")
    assert database_url() == "postgresql+psycopg://dh:pw@db.hospital/deephealth"
    assert redact_url(database_url()) == "postgresql+psycopg://dh:***@db.hospital/deephealth"


@pytest.mark.needs_data
def test_predict_cli_audit_flag(tmp_path: Path, dicom_dir: Path, monkeypatch, capsys):
    url = f"sqlite:///{tmp_path / 'cli.sqlite3'}"
    monkeypatch.setenv("DEEPHEALTH_DATABASE_URL", url)
    rc = main(["predict", str(dicom_dir), "--audit", "--format", "json"])
    capsys.readouterr()
    assert rc == 1  # the CT slice is refused
    rows = {r["input_sha256"]: r for r in _rows(url)}
    cr = (dicom_dir / "cr_chest_pa_rsna.dcm").read_bytes()
    ct = (dicom_dir / "ct_small.dcm").read_bytes()
    ok, bad = rows[hashlib.sha256(cr).hexdigest()], rows[hashlib.sha256(ct).hexdigest()]
    expected = Predictor().predict(dicom_dir / "cr_chest_pa_rsna.dcm")
    assert ok["interface"] == "cli" and ok["status_code"] == 200 and ok["label"] == expected.label
    assert json.loads(ok["probabilities"]) == pytest.approx(expected.probabilities, abs=1e-9)
    assert json.loads(ok["gate"])["status"] == expected.suitability.status
    assert bad["status_code"] == 422 and bad["label"] is None and bad["probabilities"] is None


def test_record_never_raises_and_counts_without_a_database():
    log = AuditLog("notadialect://nowhere")
    assert log.error
    log.record(interface="cli", model_name="m", model_version="1", model_sha256="x", latency_ms=1.0, status_code=200)
    assert log.flush(5.0)
    assert log.status()["failures"] == 1 and log.status()["written"] == 0
    log.close()


def test_a_gate_refusal_is_recorded_with_its_outcome(client):
    """A colour photo: the input gate refuses it (422); the audit keeps the gate's verdict, no label."""
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8), "RGB").save(buf, format="PNG")
    r = client.post(URL, files={"file": ("holiday.png", buf.getvalue())})
    assert r.status_code == 422 and r.json()["suitability"]["status"] == "refuse"
    (rec,) = _audit(client)["records"]
    assert rec["status_code"] == 422 and rec["label"] is None and rec["probabilities"] is None
    assert rec["gate"]["status"] == "refuse" and rec["gate"]["reasons"] == r.json()["suitability"]["reasons"]
    assert rec["input_format"] == "PNG"
    assert rec["reason"] == r.json()["detail"].removeprefix("holiday.png: ")
    assert rec["reason"].startswith("not suitable for this model: ")
    assert rec["study_instance_uid"] is None and rec["sop_instance_uid"] is None


# -- the review band (decision.review) -------------------------------------------------------------

FLAGGED = "test/PNEUMONIA/person100_bacteria_475.jpeg"  # bundled model: P(pneumonia) 0.887 vs threshold 0.883
CLEAR = "test/NORMAL/IM-0001-0001.jpeg"  # bundled model: P(pneumonia) 0.003, not flagged


def _alembic_config():
    from importlib import resources

    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(resources.files("deephealth.audit") / "migrations"))
    return cfg


def _database_at(path: Path, revision: str, insert_sql: str) -> str:
    """An SQLite audit database at ``path`` migrated to ``revision`` only, holding the row ``insert_sql``
    inserts; returns its URL (for the upgrade-on-open tests)."""
    from alembic import command
    from sqlalchemy import create_engine

    url = f"sqlite:///{path}"
    engine = create_engine(url)
    cfg = _alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
    engine.dispose()
    con = sqlite3.connect(path)
    con.execute(insert_sql)
    con.commit()
    con.close()
    return url


@pytest.mark.needs_data
def test_a_flagged_prediction_is_recorded_with_its_review_and_can_be_filtered(client, db_url, dataset_root: Path):
    flagged = client.post(URL, files={"file": ("a.jpeg", (dataset_root / FLAGGED).read_bytes())})
    clear = client.post(URL, files={"file": ("b.jpeg", (dataset_root / CLEAR).read_bytes())})
    refused = client.post(URL, files={"file": ("c.txt", b"not an image")})
    assert (flagged.status_code, clear.status_code, refused.status_code) == (200, 200, 415)
    fd, cd = flagged.json()["decision"], clear.json()["decision"]
    assert fd["review"] is True and fd["review_reason"].startswith("borderline: P(pneumonia) 0.887 ")
    assert cd["review"] is False and cd["review_reason"] is None

    first, second, third = _audit(client)["records"]
    assert first["label"] == "bacterial" and first["review"] is True and first["review_reason"] == fd["review_reason"]
    assert second["label"] == "normal" and second["review"] is False and second["review_reason"] is None
    assert third["status_code"] == 415 and third["review"] is None and third["review_reason"] is None
    # Stored as a real boolean column (SQLite 1/0/NULL), filterable in SQL too.
    assert [(r["review"], r["review_reason"]) for r in _rows(db_url)] == [
        (1, fd["review_reason"]), (0, None), (None, None)]
    # GET /api/v1/audit?review=true lists only the flagged answers; false only the unflagged ones.
    assert [r["id"] for r in _audit(client, review="true")["records"]] == [first["id"]]
    assert [r["id"] for r in _audit(client, review="false")["records"]] == [second["id"]]
    assert _audit(client, review="true", since=second["created_at"])["records"] == []


@pytest.mark.needs_data
def test_predict_cli_audit_records_the_review_flag(tmp_path: Path, dataset_root: Path, monkeypatch, capsys):
    url = f"sqlite:///{tmp_path / 'cli.sqlite3'}"
    monkeypatch.setenv("DEEPHEALTH_DATABASE_URL", url)
    assert main(["predict", str(dataset_root / FLAGGED), str(dataset_root / CLEAR), "--audit", "--format", "json"]) == 0
    capsys.readouterr()
    expected = Predictor().predict(dataset_root / FLAGGED).decision
    rows = {r["input_sha256"]: r for r in _rows(url)}
    flagged = rows[hashlib.sha256((dataset_root / FLAGGED).read_bytes()).hexdigest()]
    clear = rows[hashlib.sha256((dataset_root / CLEAR).read_bytes()).hexdigest()]
    assert flagged["review"] == 1 and flagged["review_reason"] == expected["review_reason"]
    assert flagged["review_reason"].startswith("borderline")
    assert clear["review"] == 0 and clear["review_reason"] is None


def test_models_match_the_migrations(tmp_path: Path):
    """The declarative model and the migrations at head describe the same table (autogenerate finds nothing)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlalchemy import create_engine

    from deephealth.audit.models import Base

    engine = create_engine(f"sqlite:///{tmp_path / 'm.sqlite3'}")
    upgrade_database(engine)
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    engine.dispose()


def test_a_database_at_0001_upgrades_and_its_rows_read_null(tmp_path: Path):
    """A database made before the review column (revision 0001, with rows) upgrades when the log opens;
    its old rows read review null, new ones carry the flag, and the review filter skips the old ones."""
    from alembic import command
    from sqlalchemy import create_engine, inspect

    path = tmp_path / "old.sqlite3"
    url = _database_at(path, "0001",
        "INSERT INTO audit_log (created_at, interface, client, model_name, model_version, model_sha256, label, "
        "probabilities, gate, latency_ms, status_code) VALUES "
        "('2026-12-01 10:00:00.000000', 'api', '10.0.0.7', 'deephealth-cxr3', '0.2.0', 'abc', 'viral', "
        "'{\"normal\": 0.1, \"bacterial\": 0.2, \"viral\": 0.7}', NULL, 12.5, 200)")
    engine = create_engine(url)
    assert "review" not in {c["name"] for c in inspect(engine).get_columns("audit_log")}
    engine.dispose()

    log = AuditLog(url)
    try:
        assert log.error is None
        reason = "borderline: P(pneumonia) 0.887 is within the review band"
        log.record(interface="cli", model_name="m", model_version="1", model_sha256="x", label="bacterial",
                   review=True, review_reason=reason, latency_ms=1.0, status_code=200)
        old, new = log.query()
        assert old["label"] == "viral" and old["probabilities"] == {"normal": 0.1, "bacterial": 0.2, "viral": 0.7}
        assert old["review"] is None and old["review_reason"] is None
        assert new["review"] is True and new["review_reason"] == reason
        assert [r["id"] for r in log.query(review=True)] == [new["id"]]
        assert log.query(review=False) == []  # an old row is not "not flagged": it is unknown
    finally:
        log.close()
    con = sqlite3.connect(path)
    assert con.execute("SELECT version_num FROM alembic_version").fetchall() == [("0004",)]
    con.close()


def test_downgrade_to_0001_drops_the_review_columns_and_keeps_the_rows(tmp_path: Path):
    from alembic import command
    from sqlalchemy import create_engine, inspect

    url = f"sqlite:///{tmp_path / 'd.sqlite3'}"
    log = AuditLog(url)
    log.record(interface="cli", model_name="m", model_version="1", model_sha256="x", label="normal",
               review=False, latency_ms=1.0, status_code=200)
    log.close()
    engine = create_engine(url)
    cfg = _alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0001")
    cols = {c["name"] for c in inspect(engine).get_columns("audit_log")}
    assert "review" not in cols and "review_reason" not in cols
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT label FROM audit_log").fetchall() == [("normal",)]
    engine.dispose()


def test_a_fresh_database_has_an_index_on_review_and_the_review_filter_uses_it(tmp_path: Path):
    """Migration 0003 indexes ``review`` (the audit API's ``review`` filter); downgrading to 0002 drops the
    index and keeps the column and the rows."""
    from alembic import command
    from sqlalchemy import create_engine, inspect

    path = tmp_path / "fresh.sqlite3"
    engine = create_engine(f"sqlite:///{path}")
    upgrade_database(engine)
    indexes = {ix["name"]: ix["column_names"] for ix in inspect(engine).get_indexes("audit_log")}
    assert indexes == {"ix_audit_log_created_at": ["created_at"], "ix_audit_log_review": ["review"],
                       "ix_audit_log_study_instance_uid": ["study_instance_uid"]}  # 0004: the study_uid filter
    engine.dispose()

    con = sqlite3.connect(path)
    assert con.execute("SELECT version_num FROM alembic_version").fetchall() == [("0004",)]
    # the statement AuditLog.query(review=True) runs (SQLAlchemy renders is_(True) as IS 1 on SQLite)
    plan = " ".join(str(r[-1]) for r in con.execute(
        "EXPLAIN QUERY PLAN SELECT * FROM audit_log WHERE review IS 1 ORDER BY id LIMIT 100"))
    assert "ix_audit_log_review" in plan, plan
    plan = " ".join(str(r[-1]) for r in con.execute(
        "EXPLAIN QUERY PLAN SELECT * FROM audit_log WHERE study_instance_uid = '1.2.3' ORDER BY id LIMIT 100"))
    assert "ix_audit_log_study_instance_uid" in plan, plan
    con.close()

    engine = create_engine(f"sqlite:///{path}")
    cfg = _alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0002")
    assert [ix["name"] for ix in inspect(engine).get_indexes("audit_log")] == ["ix_audit_log_created_at"]
    assert "review" in {c["name"] for c in inspect(engine).get_columns("audit_log")}
    engine.dispose()


# -- DICOM UIDs, the reason of a refusal, order and time window (migration 0004) ---------------------

CR = "cr_chest_pa_rsna.dcm"  # a frontal CR: classified
CR_STUDY = "1.2.276.0.7230010.3.1.2.8323329.6904.1517875201.850818"
CR_SOP = "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819"
CT = "ct_small.dcm"  # a CT slice: refused by the input gate
CT_STUDY = "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322"
CT_SOP = "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322"


def test_a_dicom_upload_is_recorded_with_its_uids_and_a_refusal_with_its_reason(client, db_url, dicom_dir: Path):
    """Web: a DICOM upload's Study/SOP Instance UIDs are recorded (the patient's name and ID are not);
    a refused or unreadable upload records the user's one-line message, in English, without the file
    name, whatever the answer's language."""
    cr = client.post(URL, files={"file": ("Garcia_Lopez_Maria.dcm", (dicom_dir / CR).read_bytes())})
    ct = client.post(URL, files={"file": ("Garcia_Lopez_Maria_ct.dcm", (dicom_dir / CT).read_bytes())},
                     headers={"Accept-Language": "es"})
    empty = client.post(URL, files={"file": ("Garcia_Lopez_Maria.jpeg", b"")})
    text = client.post(URL, files={"file": ("Garcia_Lopez_Maria.txt", b"hello, not an image")})
    assert (cr.status_code, ct.status_code, empty.status_code, text.status_code) == (200, 422, 422, 415)

    r_cr, r_ct, r_empty, r_text = _audit(client)["records"]
    assert (r_cr["study_instance_uid"], r_cr["sop_instance_uid"]) == (CR_STUDY, CR_SOP)
    assert r_cr["reason"] is None and r_cr["status_code"] == 200
    assert (r_ct["study_instance_uid"], r_ct["sop_instance_uid"]) == (CT_STUDY, CT_SOP)
    assert r_ct["status_code"] == 422 and r_ct["label"] is None
    # the message the user got, in English (this user asked for Spanish), less its "<file name>: " prefix
    english = client.post(URL, files={"file": ("Garcia_Lopez_Maria_ct.dcm", (dicom_dir / CT).read_bytes())})
    assert r_ct["reason"] == english.json()["detail"].removeprefix("Garcia_Lopez_Maria_ct.dcm: ")
    assert r_ct["reason"] == "DICOM modality CT (computed tomography) is not a radiograph (expected CR or DX)"
    assert r_ct["reason"] not in ct.json()["detail"]  # that answer was in Spanish
    assert r_empty["reason"] == "empty file (0 bytes)" and r_empty["study_instance_uid"] is None
    assert r_text["status_code"] == 415
    assert r_text["reason"] == text.json()["detail"].removeprefix("Garcia_Lopez_Maria.txt: ")
    assert r_text["study_instance_uid"] is None and r_text["sop_instance_uid"] is None
    raw = json.dumps(_rows(db_url))
    assert "Garcia" not in raw  # no file name, in the reason either
    assert "16d7f894-55d7-4d95-8957-d18987f0e981" not in raw  # the CR's PatientName / PatientID
    # an administrator finds a study's records by its Study Instance UID (the second CT upload included)
    everything = _audit(client)["records"]
    assert len(everything) == 5 and everything[-1]["study_instance_uid"] == CT_STUDY  # the English re-upload
    assert [r["id"] for r in _audit(client, study_uid=CT_STUDY)["records"]] == [r_ct["id"], everything[-1]["id"]]
    assert [r["id"] for r in _audit(client, study_uid=CR_STUDY)["records"]] == [r_cr["id"]]
    assert _audit(client, study_uid="1.2.3")["records"] == []
    headers = {"Authorization": f"Bearer {KEY}"}
    assert client.get("/api/v1/audit", params={"study_uid": "Garcia"}, headers=headers).status_code == 422
    assert "CompressedSamples" not in raw and "1CT1" not in raw  # the CT's


def test_a_too_large_upload_records_its_reason_without_the_file_name(predictor, db_url):
    """413 found while streaming (no Content-Length): the message names the file; the record does not."""
    app = create_app(Settings(database_url=db_url, admin_api_key=KEY, max_upload_mb=1), predictor=predictor)
    boundary = "b0undary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"Garcia_Lopez_Maria.png\""
            "\r\nContent-Type: image/png\r\n\r\n").encode()

    def body():  # a generator: sent chunked, without Content-Length
        yield head + b"\x89PNG\r\n\x1a\n"
        for _ in range(3):
            yield b"0" * 2**20
        yield f"\r\n--{boundary}--\r\n".encode()

    with TestClient(app) as c:
        r = c.post(URL, content=body(), headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        assert r.status_code == 413 and r.json()["detail"].startswith("Garcia_Lopez_Maria.png: file too large")
        (rec,) = _audit(c)["records"]
    assert rec["status_code"] == 413 and rec["reason"] == r.json()["detail"].removeprefix("Garcia_Lopez_Maria.png: ")


@pytest.mark.needs_data
def test_audit_api_order_and_time_window(client, dataset_root: Path):
    files = sorted((dataset_root / "test" / "NORMAL").glob("*.jpeg"))[:3]
    for f in files:
        assert client.post(URL, files={"file": (f.name, f.read_bytes())}).status_code == 200
    oldest_first = _audit(client)["records"]
    ids = [r["id"] for r in oldest_first]
    assert ids == sorted(ids) and len(ids) == 3  # the default stays oldest first
    assert [r["id"] for r in _audit(client, order="asc")["records"]] == ids
    assert [r["id"] for r in _audit(client, order="desc")["records"]] == ids[::-1]
    assert [r["id"] for r in _audit(client, order="desc", limit=2)["records"]] == [ids[2], ids[1]]  # the latest two
    assert [r["id"] for r in _audit(client, limit=2)["records"]] == ids[:2]
    t0, t1, t2 = (r["created_at"] for r in oldest_first)
    assert [r["id"] for r in _audit(client, until=t1)["records"]] == [ids[0]]  # until is exclusive
    assert [r["id"] for r in _audit(client, since=t1, until=t2)["records"]] == [ids[1]]
    assert [r["id"] for r in _audit(client, since=t0, until=t2, order="desc")["records"]] == [ids[1], ids[0]]
    # a naive time is UTC; a zone is honoured
    naive = dt.datetime.fromisoformat(t1).astimezone(dt.timezone.utc).replace(tzinfo=None).isoformat()
    madrid = dt.datetime.fromisoformat(t1).astimezone(dt.timezone(dt.timedelta(hours=1))).isoformat()
    assert [r["id"] for r in _audit(client, until=naive)["records"]] == [ids[0]]
    assert [r["id"] for r in _audit(client, until=madrid)["records"]] == [ids[0]]
    assert _audit(client, since=t2, until=t1)["records"] == []
    headers = {"Authorization": f"Bearer {KEY}"}
    assert client.get("/api/v1/audit", params={"order": "newest"}, headers=headers).status_code == 422
    assert client.get("/api/v1/audit", params={"until": "yesterday"}, headers=headers).status_code == 422


def test_the_audit_parameters_are_in_the_openapi_schema(client):
    op = client.get("/openapi.json").json()["paths"]["/api/v1/audit"]["get"]
    params = {p["name"]: p for p in op["parameters"]}
    assert {"since", "until", "order", "limit", "review", "study_uid"} <= set(params)
    assert params["order"]["schema"]["enum"] == ["asc", "desc"] and params["order"]["schema"]["default"] == "asc"
    assert "exclusive" in params["until"]["description"] and "inclusive" in params["since"]["description"]
    assert "newest first" in params["order"]["description"]
    assert "order=desc" in op["description"]


@pytest.mark.needs_data
def test_predict_cli_audit_records_dicom_uids_and_the_reason(tmp_path: Path, dicom_dir: Path, monkeypatch, capsys):
    """CLI: the UIDs of DICOM files (refused or not) and the reason of each failure, without its path."""
    url = f"sqlite:///{tmp_path / 'cli.sqlite3'}"
    monkeypatch.setenv("DEEPHEALTH_DATABASE_URL", url)
    patient = tmp_path / "Garcia_Lopez_Maria"
    patient.mkdir()
    (patient / "scan.dcm").write_bytes((dicom_dir / CT).read_bytes())
    (patient / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    rc = main(["predict", str(dicom_dir / CR), str(patient / "scan.dcm"), str(patient / "broken.png"),
               "--audit", "--format", "json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 1
    errors = {Path(r["source"]).name: r["error"] for r in out if not r["ok"]}
    rows = {r["input_sha256"]: r for r in _rows(url)}
    cr = rows[hashlib.sha256((dicom_dir / CR).read_bytes()).hexdigest()]
    ct = rows[hashlib.sha256((dicom_dir / CT).read_bytes()).hexdigest()]
    broken = rows[hashlib.sha256((patient / "broken.png").read_bytes()).hexdigest()]
    assert (cr["study_instance_uid"], cr["sop_instance_uid"], cr["reason"]) == (CR_STUDY, CR_SOP, None)
    assert (ct["study_instance_uid"], ct["sop_instance_uid"], ct["status_code"]) == (CT_STUDY, CT_SOP, 422)
    assert ct["reason"] == errors["scan.dcm"].removeprefix(str(patient / "scan.dcm") + ": ")
    assert ct["reason"] == "DICOM modality CT (computed tomography) is not a radiograph (expected CR or DX)"
    assert broken["study_instance_uid"] is None and broken["status_code"] == 422
    assert broken["reason"] and broken["reason"] in errors["broken.png"]
    raw = json.dumps(_rows(url))
    assert "Garcia" not in raw and str(tmp_path) not in raw


@pytest.mark.needs_data
def test_pacs_records_the_instance_uids_and_the_reason(tmp_path: Path, dicom_dir: Path, predictor):
    """``deephealth pacs``: each record names its study and instance, a refused one says why (the
    instance's own line), and one that could not even be retrieved still names its UIDs."""
    import pydicom

    from deephealth.pacs import PacsWorker

    lateral = pydicom.dcmread(dicom_dir / CR)
    lateral.ViewPosition = "LL"

    class FakePacs:
        base_url = "http://pacs.example:8042/dicom-web"

        def retrieve_instance(self, study, series, sop):
            if sop == "1.2.3.4.9":
                raise ConnectionError("PACS went away")
            return lateral

        def store_instances(self, datasets, study_instance_uid=None):  # pragma: no cover - nothing is stored
            raise AssertionError("a refused instance gets nothing stored")

    log = AuditLog(f"sqlite:///{tmp_path / 'pacs.sqlite3'}")
    try:
        worker = PacsWorker(FakePacs(), predictor, audit=log.record)
        refused = worker.process_instance("1.2.3.4", "1.2.3.4.5", "1.2.3.4.6")
        failed = worker.process_instance("1.2.3.4", "1.2.3.4.5", "1.2.3.4.9")
        assert (refused.status, failed.status) == ("refused", "failed")
        r_refused, r_failed = log.query()
    finally:
        log.close()
    assert (r_refused["study_instance_uid"], r_refused["sop_instance_uid"]) == ("1.2.3.4", "1.2.3.4.6")
    assert r_refused["status_code"] == 422 and r_refused["reason"] == refused.reason
    assert "DICOM View Position (0018,5101) is LL: a lateral view" in r_refused["reason"]
    assert (r_failed["study_instance_uid"], r_failed["sop_instance_uid"]) == ("1.2.3.4", "1.2.3.4.9")
    assert r_failed["status_code"] == 502 and r_failed["reason"] == failed.error
    assert r_failed["reason"] == "instance 1.2.3.4.9: ConnectionError: PACS went away"


def test_failure_reason_is_one_line_without_names_or_credentials_and_cut():
    from deephealth.audit import REASON_MAX, failure_reason

    path = "/srv/scans/Garcia_Lopez_Maria/Garcia_Lopez_Maria.dcm"
    msg = f"{path}: corrupt DICOM file (cannot read\n  '{path}'; see Garcia_Lopez_Maria.dcm)"
    assert failure_reason(msg, path) == "corrupt DICOM file (cannot read '<input>'; see <input>)"
    assert failure_reason("a.png: empty file (0 bytes)", "a.png") == "empty file (0 bytes)"
    assert failure_reason("instance 1.2: HTTPError: 401 for url http://dh:s3cret@pacs:8042/dicom-web") == \
        "instance 1.2: HTTPError: 401 for url http://pacs:8042/dicom-web"
    long = failure_reason("x: " + "why " * 400, "x")
    assert len(long) == REASON_MAX and long.endswith("...") and long.startswith("why why")
    assert failure_reason("", "x") is None and failure_reason(None) is None


def test_dicom_uids_reads_only_valid_uids(dicom_dir: Path):
    import pydicom

    from deephealth.audit import dicom_uids

    assert dicom_uids((dicom_dir / CR).read_bytes()) == (CR_STUDY, CR_SOP)
    assert dicom_uids(b"\x89PNG\r\n\x1a\n") == (None, None) and dicom_uids(None) == (None, None)
    ds = pydicom.dcmread(dicom_dir / CR)
    with pytest.warns(UserWarning, match="Invalid value for VR UI"):
        ds.StudyInstanceUID = "Garcia^Maria"  # not a UID: never stored
    buf = io.BytesIO()
    ds.save_as(buf)
    assert dicom_uids(buf.getvalue()) == (None, CR_SOP)
    assert dicom_uids((dicom_dir / CR).read_bytes()[:200]) == (None, None)  # cut inside the header


def test_a_database_at_0003_upgrades_to_0004_and_keeps_its_rows(tmp_path: Path):
    """A 0003 database with a row upgrades when the log opens: the old row reads its values and null
    UIDs and reason; new rows carry them; downgrading to 0003 drops the three columns, keeps the rows."""
    from alembic import command
    from sqlalchemy import create_engine, inspect

    path = tmp_path / "v3.sqlite3"
    url = _database_at(path, "0003",
        "INSERT INTO audit_log (created_at, interface, client, input_sha256, input_format, input_bytes, model_name, "
        "model_version, model_sha256, label, probabilities, gate, review, review_reason, latency_ms, status_code) "
        "VALUES ('2026-12-02 09:30:00.000000', 'pacs', 'http://pacs:8042/dicom-web', 'ab12', 'DICOM', 1234, "
        "'deephealth-cxr3', '0.3.0', 'abc', NULL, NULL, '{\"status\": \"refuse\"}', NULL, NULL, 40.0, 422)")
    engine = create_engine(url)
    assert "reason" not in {c["name"] for c in inspect(engine).get_columns("audit_log")}
    engine.dispose()

    log = AuditLog(url)
    try:
        assert log.error is None
        log.record(interface="pacs", model_name="m", model_version="1", model_sha256="x", latency_ms=2.0,
                   status_code=422, study_instance_uid="1.2.3", sop_instance_uid="1.2.3.4",
                   reason="instance 1.2.3.4: not suitable for this model: a lateral view")
        old, new = log.query()
        assert old["created_at"] == "2026-12-02T09:30:00+00:00" and old["status_code"] == 422
        assert old["gate"] == {"status": "refuse"} and old["input_sha256"] == "ab12"
        assert old["study_instance_uid"] is None and old["sop_instance_uid"] is None and old["reason"] is None
        assert (new["study_instance_uid"], new["sop_instance_uid"]) == ("1.2.3", "1.2.3.4")
        assert new["reason"] == "instance 1.2.3.4: not suitable for this model: a lateral view"
        assert [r["id"] for r in log.query(order="desc")] == [new["id"], old["id"]]
        assert [r["id"] for r in log.query(until=dt.datetime(2026, 12, 3))] == [old["id"]]
    finally:
        log.close()
    con = sqlite3.connect(path)
    assert con.execute("SELECT version_num FROM alembic_version").fetchall() == [("0004",)]
    con.close()

    engine = create_engine(url)
    cfg = _alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0003")
    cols = {c["name"] for c in inspect(engine).get_columns("audit_log")}
    assert not cols & {"study_instance_uid", "sop_instance_uid", "reason"}
    assert {ix["name"] for ix in inspect(engine).get_indexes("audit_log")} == {"ix_audit_log_created_at",
                                                                            "ix_audit_log_review"}
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT input_sha256 FROM audit_log ORDER BY id").fetchall() == [("ab12",), (None,)]
    engine.dispose()


def test_query_rejects_an_unknown_order(tmp_path: Path):
    log = AuditLog(f"sqlite:///{tmp_path / 'o.sqlite3'}")
    try:
        with pytest.raises(ValueError, match="order must be one of asc, desc"):
            log.query(order="newest")
    finally:
        log.close()
