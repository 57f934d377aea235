"""``deephealth pacs`` credentials: sent UTF-8 encoded (RFC 7617), never printed or recorded.

A small DICOMweb stand-in on loopback answers the QIDO-RS searches of one study with one CR
instance and refuses its retrieval (404), so one run goes through the search, the instance's
failure and its audit record without Orthanc or a dataset, and records every Authorization header.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

pytest.importorskip("dicomweb_client", reason="deephealth pacs needs the [pacs] extra")
pytest.importorskip("highdicom", reason="deephealth pacs needs the [pacs] extra")

from _servers import http_server  # noqa: E402

from deephealth.cli import main  # noqa: E402
from deephealth.pacs import make_client, redact_url, split_credentials  # noqa: E402

STUDY, SERIES, SOP = "1.2.826.0.1.3680043.99.1", "1.2.826.0.1.3680043.99.1.2", "1.2.826.0.1.3680043.99.1.2.3"


def _uid(tag: str, uid: str) -> dict:
    return {tag: {"vr": "UI", "Value": [uid]}}


@contextmanager
def fake_dicomweb(user: str, password: str) -> Iterator[tuple[str, list[bytes]]]:
    """A DICOMweb root on 127.0.0.1 that wants basic auth ``user:password`` (UTF-8); yields
    ``(root URL, the raw Authorization header of every request)``."""
    expected = b"Basic " + base64.b64encode(f"{user}:{password}".encode("utf-8"))
    seen: list[bytes] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            # raw header bytes, as they came over the wire (http.server decodes them as Latin-1)
            auth = (self.headers.get("Authorization") or "").encode("latin-1")
            seen.append(auth)
            if auth != expected:
                self._send(401, b"", {"WWW-Authenticate": 'Basic realm="test"'})
                return
            url = urlsplit(self.path)
            query = parse_qs(url.query)
            if int(query.get("offset", ["0"])[0]) > 0:  # dicomweb-client pages until an empty answer
                self._json([])
            elif url.path == "/dicom-web/studies":
                self._json([_uid("0020000D", STUDY)])
            elif url.path == f"/dicom-web/studies/{STUDY}/series":
                self._json([_uid("0020000E", SERIES)] if query.get("Modality") == ["CR"] else [])
            elif url.path == f"/dicom-web/studies/{STUDY}/series/{SERIES}/instances":
                self._json([_uid("00080018", SOP)])
            else:  # the WADO-RS retrieval: the instance fails, and is audited
                self._send(404, b"no such instance", {"Content-Type": "text/plain"})

        def _json(self, body: list) -> None:
            self._send(200, json.dumps(body).encode(), {"Content-Type": "application/dicom+json"})

        def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    with http_server(Handler) as url:
        yield f"{url}/dicom-web", seen


def _audit_rows() -> list[dict]:
    """Every record of the audit trail the environment names, read through its own API."""
    from deephealth.audit import open_audit_log

    audit = open_audit_log()
    try:
        return audit.query(limit=1000)
    finally:
        audit.close()


def test_split_and_redact_url() -> None:
    assert split_credentials("http://dha:p%C3%A4ss%40x@pacs:8042/dicom-web") == (
        "http://pacs:8042/dicom-web", "dha", "päss@x")
    assert split_credentials("https://[::1]:8042/dicom-web") == ("https://[::1]:8042/dicom-web", None, None)
    assert split_credentials("http://dha@pacs/dicom-web") == ("http://pacs/dicom-web", "dha", None)
    assert redact_url("http://dha:secret@pacs:8042/dicom-web") == "http://dha:***@pacs:8042/dicom-web"
    assert redact_url("http://dha@pacs/dicom-web") == "http://dha@pacs/dicom-web"
    assert redact_url("http://pacs:8042/dicom-web") == "http://pacs:8042/dicom-web"


def test_a_non_ascii_password_is_sent_as_utf8(monkeypatch, capsys) -> None:
    with fake_dicomweb("dh", "pässwörd") as (url, seen):
        client = make_client(url, "dh", "pässwörd", timeout=10, attempts=1)
        assert client.search_for_studies() == [_uid("0020000D", STUDY)]
        assert seen == [b"Basic " + base64.b64encode("dh:pässwörd".encode("utf-8"))]
        assert seen[0] == b"Basic ZGg6cMOkc3N3w7ZyZA=="  # not Latin-1's ZGg6cORzc3f2cmQ=
        # the same through the command, with the credentials from the environment
        monkeypatch.setenv("DEEPHEALTH_PACS_USER", "dh")
        monkeypatch.setenv("DEEPHEALTH_PACS_PASSWORD", "pässwörd")
        rc = main(["pacs", "--url", url, "--format", "json", "--attempts", "1", "--timeout", "10"])
    out, err = capsys.readouterr()
    assert rc == 1, err  # the one instance fails (404 on retrieval), the searches were authorised
    counts = json.loads(out)["counts"]
    assert counts == {"stored": 0, "skipped": 0, "refused": 0, "failed": 1}
    assert set(seen) == {b"Basic ZGg6cMOkc3N3w7ZyZA=="}


def test_a_password_in_the_url_is_used_but_never_shown_or_recorded(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.delenv("DEEPHEALTH_PACS_USER", raising=False)
    monkeypatch.delenv("DEEPHEALTH_PACS_PASSWORD", raising=False)
    monkeypatch.delenv("DEEPHEALTH_DATABASE_URL", raising=False)
    monkeypatch.setenv("DEEPHEALTH_STATE_DIR", str(tmp_path))
    with fake_dicomweb("dha", "s3cr3t-pw") as (url, seen):
        secret_url = url.replace("http://", "http://dha:s3cr3t-pw@")
        rc = main(["pacs", "--url", secret_url, "--audit", "--format", "table", "--attempts", "1",
                   "--timeout", "10"])
    out, err = capsys.readouterr()
    assert rc == 1, err
    assert "FAILED   instance " + SOP in out and "404" in out
    assert seen and set(seen) == {b"Basic " + base64.b64encode(b"dha:s3cr3t-pw")}  # still authenticated
    rows = _audit_rows()
    assert len(rows) == 1
    assert rows[0]["interface"] == "pacs" and rows[0]["status_code"] == 502
    assert rows[0]["client"] == url.replace("http://", "http://dha:***@")
    assert "s3cr3t-pw" not in json.dumps(rows, default=str) + out + err


def test_the_error_line_of_an_unreachable_pacs_hides_the_password(capsys) -> None:
    rc = main(["pacs", "--url", "http://dha:s3cr3t-pw@127.0.0.1:9/dicom-web", "--timeout", "2", "--attempts", "1"])
    out, err = capsys.readouterr()
    assert rc == 2
    assert "cannot query the PACS at http://dha:***@127.0.0.1:9/dicom-web: " in err
    assert "s3cr3t-pw" not in out + err


def test_a_malformed_url_is_one_line_without_the_password(capsys) -> None:
    rc = main(["pacs", "--url", "ftp://dha:s3cr3t-pw@pacs/dicom-web", "--attempts", "1"])
    out, err = capsys.readouterr()
    assert rc == 2
    assert err.startswith("--url ftp://dha:***@pacs/dicom-web: ") and err.count("\n") == 1
    assert "s3cr3t-pw" not in out + err and "Traceback" not in err
