"""A real Orthanc PACS (Debian ``orthanc`` + ``orthanc-dicomweb``) for the tests, on loopback.

:func:`orthanc_server` writes a temporary configuration and storage folder, starts ``Orthanc`` on a
free port with the DICOMweb plugin, waits until its REST API answers and stops it afterwards.
Orthanc 1.10 has no bind-address option: it listens on the port on every interface but, with
``RemoteAccessAllowed`` false, answers only clients on the loopback (127.0.0.1); its DICOM (DIMSE)
server is disabled. ``make install-dev`` installs both packages with apt.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PLUGIN_CANDIDATES = (
    Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so"),
    Path("/usr/lib/orthanc/libOrthancDicomWeb.so"),
)


def orthanc_missing() -> str | None:
    """Why Orthanc cannot run here (``None`` if it can): a clear reason for ``pytest.skip``."""
    if shutil.which("Orthanc") is None:
        return "Orthanc is not installed (Debian package orthanc; run make install-dev)"
    if not any(p.is_file() for p in PLUGIN_CANDIDATES):
        return "the Orthanc DICOMweb plugin is not installed (Debian package orthanc-dicomweb; run make install-dev)"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def orthanc_server(workdir: Path, start_timeout_s: float = 60.0) -> Iterator[str]:
    """Run Orthanc with its storage in ``workdir``; yields its base URL ``http://127.0.0.1:PORT``.

    DICOMweb is at ``<base>/dicom-web``. Raises RuntimeError (with Orthanc's log tail) if it does
    not start.
    """
    plugin = next(p for p in PLUGIN_CANDIDATES if p.is_file())
    port = _free_port()
    storage = workdir / "storage"
    storage.mkdir(parents=True, exist_ok=True)
    config = {
        "Name": "deephealth-test",
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "HttpPort": port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomServerEnabled": False,
        "SaveJobs": False,
        "Plugins": [str(plugin)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    cfg = workdir / "orthanc.json"
    cfg.write_text(json.dumps(config, indent=2))
    log = open(workdir / "orthanc.log", "wb")
    proc = subprocess.Popen(["Orthanc", str(cfg)], stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited with status {proc.returncode}: "
                                   f"{(workdir / 'orthanc.log').read_text(errors='replace')[-2000:]}")
            try:
                with urllib.request.urlopen(f"{base}/system", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"Orthanc did not answer within {start_timeout_s} s: "
                                   f"{(workdir / 'orthanc.log').read_text(errors='replace')[-2000:]}")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()
