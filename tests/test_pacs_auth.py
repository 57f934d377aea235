"""``deephealth pacs`` credentials: sent UTF-8 encoded (RFC 7617).

A small DICOMweb stand-in on loopback answers the QIDO-RS searches of one study with one CR
instance and refuses its retrieval (404), so one run goes through the search, the instance's
failure and its audit record without Orthanc or a dataset, and records every Authorization header.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

pytest.importorskip("dicomweb_client", reason="deephealth pacs needs the [pacs] extra")
pytest.importorskip("highdicom", reason="deephealth pacs needs the [pacs] extra")

from deephealth.cli import main  # noqa: E402
from deephealth.pacs import make_client  # noqa: E402

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

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/dicom-web", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


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
