"""End-to-end: Debian's Chromium, driven by Playwright, uses the upload page against a real uvicorn server.

The browser is the system one (``/usr/bin/chromium``, installed by ``make install-dev`` with
apt-get; override with ``DEEPHEALTH_CHROMIUM``); Playwright never downloads a browser here. The
server serves the released model if it is bundled, else the ``tiny_model_dir`` test model, on
127.0.0.1 only.

Set ``DEEPHEALTH_SCREENSHOT_DIR`` to also save desktop and phone screenshots of a result there
(this is how ``docs/screenshot.png`` is made).
"""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright not installed: pip install -e '.[dev]'")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from deephealth.inference import Predictor  # noqa: E402
from deephealth.labels import CLASS_DESCRIPTIONS, CLASS_NAMES  # noqa: E402
from deephealth.paths import default_model_dir  # noqa: E402
from deephealth.web.app import create_app  # noqa: E402
from deephealth.web.settings import Settings  # noqa: E402

from _servers import live_server, prefix_proxy  # noqa: E402

CHROMIUM = os.environ.get("DEEPHEALTH_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.needs_data,
    pytest.mark.skipif(
        not Path(CHROMIUM).is_file(),
        reason=f"no Chromium at {CHROMIUM}: run `make install-dev` (apt-get install chromium) or set DEEPHEALTH_CHROMIUM",
    ),
]


@pytest.fixture(scope="module")
def model_dir(request: pytest.FixtureRequest) -> Path:
    """The released model when it is bundled, otherwise the tiny test model."""
    released = default_model_dir()
    if (released / "metadata.json").is_file():
        return released
    return request.getfixturevalue("tiny_model_dir")


@contextmanager
def _uvicorn(model_dir: Path, **settings) -> Iterator[str]:
    """uvicorn serving the app (model loaded by the lifespan) on 127.0.0.1 and a free port."""
    with live_server(create_app(Settings(model_dir=model_dir, **settings)), start_timeout_s=60) as base:
        yield base


@pytest.fixture(scope="module")
def server(model_dir: Path) -> Iterator[str]:
    """The app with default settings (32 MB upload limit)."""
    with _uvicorn(model_dir) as url:
        yield url


@pytest.fixture(scope="module")
def small_server(model_dir: Path) -> Iterator[str]:
    """The app with a 2 MB upload limit."""
    with _uvicorn(model_dir, max_upload_mb=2) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


def _open(browser, url: str, **context_args):
    context = browser.new_context(**({"viewport": {"width": 1200, "height": 900}} | context_args))
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.goto(url + "/")
    sync_api.expect(pg.locator("#model-version")).not_to_have_text("not loaded")
    return context, pg, errors


@pytest.fixture()
def page(browser, server):
    """A desktop-sized page on the default server; fails the test on any JavaScript error."""
    context, pg, errors = _open(browser, server)
    yield pg
    context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


@pytest.fixture()
def small_page(browser, small_server):
    """A page on the server with the 2 MB limit."""
    context, pg, errors = _open(browser, small_server)
    yield pg
    context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


@pytest.fixture(scope="module")
def xray(dataset_root: Path) -> Path:
    """A real bacterial-pneumonia X-ray from the test split (person101_bacteria_483: the released model
    0.3.0 calls it bacterial with P = 0.89, a typical result for the screenshot)."""
    return dataset_root / "test" / "PNEUMONIA" / "person101_bacteria_483.jpeg"


FLAGGED = re.compile(r"(^|\s)flagged(\s|$)")
REVIEW_ADVICE = {  # the page's advice on a flagged film (README, "What to do with a flagged film")
    "en": {
        "pneumonia_vs_normal": "Give this label no weight: read the film yourself (or ask a radiologist) before "
                               "acting. A flagged “no pneumonia” is not a negative result.",
        "bacterial_vs_viral": "The pneumonia call stands; only bacterial vs viral is undecided: give the kind of "
                              "pneumonia no weight.",
    },
    "es": {
        "pneumonia_vs_normal": "No dé ningún peso a esta etiqueta: lea usted la radiografía (o consulte a un "
                               "radiólogo) antes de actuar. Un «sin neumonía» marcado no es un resultado negativo.",
        "bacterial_vs_viral": "La indicación de neumonía se mantiene; solo queda sin decidir si es bacteriana o "
                              "vírica: no dé peso al tipo de neumonía.",
    },
}


def _expect_result(pg, expected, filename: str) -> None:
    expect = sync_api.expect
    expect(pg.locator("body")).to_have_attribute("data-state", "result", timeout=30_000)
    expect(pg.locator("#result")).to_be_visible()
    expect(pg.locator("#result-file")).to_have_text(filename)
    expect(pg.locator("#pred-index")).to_have_text(str(expected.label_index))
    expect(pg.locator("#pred-label")).to_have_text(CLASS_DESCRIPTIONS[expected.label])
    bars = pg.locator("#bars li")
    expect(bars).to_have_count(3)
    for i, name in enumerate(CLASS_NAMES):
        pct = 100 * expected.probabilities[name]
        bar = bars.nth(i)
        expect(bar.locator(".bar-pct")).to_have_text(f"{pct:.1f} %")
        expect(bar.locator(".bar-label span").first).to_have_text(f"{i} · {CLASS_DESCRIPTIONS[name]}")
        width = bar.locator(".bar-fill").evaluate("e => e.style.width")
        assert float(width.rstrip("%")) == pytest.approx(pct, abs=0.01)
    expect(bars.nth(expected.label_index)).to_have_class("top")
    d = expected.decision or {}
    if d.get("threshold") is not None:  # a model with an operating point says how the label was decided
        expect(pg.locator("#decision")).to_be_visible()
        expect(pg.locator("#decision")).to_contain_text(
            f"Probability of pneumonia {100 * d['pneumonia_probability']:.1f} %. "
            f"The model calls pneumonia from {100 * d['threshold']:.1f} %")
    else:
        expect(pg.locator("#decision")).to_be_hidden()
    if d.get("review"):  # in the review band: the notice with the reason and what to do, next to the decision
        expect(pg.locator("#review")).to_be_visible()
        advice = REVIEW_ADVICE["en"][d["review_kind"]]
        expect(pg.locator("#review")).to_have_text(f"Flagged for review — {d['review_reason']} {advice}")
        expect(pg.locator("#prediction")).to_have_class(FLAGGED)  # the label de-emphasised
    else:
        expect(pg.locator("#review")).to_be_hidden()
        expect(pg.locator("#prediction")).not_to_have_class(FLAGGED)
    # the preview and the heatmap overlay are decoded images on screen
    for sel in ("#preview", "#overlay"):
        assert pg.locator(sel).evaluate("img => img.complete && img.naturalWidth") > 0, sel
    expect(pg.locator("#notice")).to_be_visible()
    expect(pg.locator("#notice")).to_contain_text("Decision support, not a diagnosis.")


def test_upload_a_real_xray_shows_class_bars_and_heatmap(page, xray, model_dir):
    expected = Predictor(model_dir).predict(xray.read_bytes(), name=xray.name)
    expect = sync_api.expect
    page.set_input_files("#file", str(xray))
    _expect_result(page, expected, xray.name)

    overlay = page.locator("#overlay")
    expect(overlay).to_be_visible()
    # the overlay covers the preview exactly (same box on screen)
    assert overlay.bounding_box() == page.locator("#preview").bounding_box()
    # the heatmap really is coloured (the preview is gray): sample the drawn overlay's pixels
    spread = overlay.evaluate(
        """img => { const c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight;
                    const g = c.getContext('2d'); g.drawImage(img, 0, 0);
                    const d = g.getImageData(0, 0, c.width, c.height).data; let s = 0;
                    for (let i = 0; i < d.length; i += 4) s += Math.max(d[i], d[i+1], d[i+2]) - Math.min(d[i], d[i+1], d[i+2]);
                    return s / (d.length / 4); }"""
    )
    assert spread > 5, "overlay has no colour: no heatmap drawn"
    page.uncheck("#heatmap-toggle")
    expect(overlay).to_be_hidden()
    expect(page.locator("#preview")).to_be_visible()
    page.check("#heatmap-toggle")
    expect(overlay).to_be_visible()

    kb = round(len(xray.read_bytes()) / 1024)
    expect(page.locator("#image-info")).to_have_text(f"Read as JPEG · 224 × 224 px · {kb} KB")
    art = Predictor(model_dir).artifact
    expect(page.locator("#model-version")).to_have_text(f"{art.name} {art.version}")
    expect(page.locator("#error")).to_be_hidden()

    shots = os.environ.get("DEEPHEALTH_SCREENSHOT_DIR")
    if shots:
        Path(shots).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(shots) / "screenshot.png"), full_page=True)


def test_drag_and_drop_a_dicom_shows_its_preview(page, dicom_dir, model_dir):
    path = dicom_dir / "cr_chest_pa_rsna.dcm"
    expected = Predictor(model_dir).predict(path.read_bytes(), name=path.name)
    data = list(path.read_bytes())
    page.evaluate(
        """([bytes, name]) => {
             const file = new File([new Uint8Array(bytes)], name, {type: 'application/dicom'});
             const dt = new DataTransfer(); dt.items.add(file);
             const zone = document.getElementById('dropzone');
             zone.dispatchEvent(new DragEvent('dragover', {dataTransfer: dt, bubbles: true, cancelable: true}));
             zone.dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));
           }""",
        [data, path.name],
    )
    _expect_result(page, expected, path.name)
    sync_api.expect(page.locator("#image-info")).to_contain_text("DICOM · 1024 × 1024 px · MONOCHROME2 · CR")
    if expected.warnings:
        sync_api.expect(page.locator("#warnings")).to_be_visible()
        sync_api.expect(page.locator("#warning-list li")).to_have_count(len(expected.warnings))


def test_rejected_files_show_clear_errors(page, xray):
    expect = sync_api.expect
    # a text file: 415
    page.set_input_files("#file", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not an x-ray\n" * 50}])
    expect(page.locator("body")).to_have_attribute("data-state", "error", timeout=30_000)
    expect(page.locator("#error")).to_be_visible()
    expect(page.locator("#error-title")).to_have_text("Unsupported file format")
    expect(page.locator("#error-detail")).to_have_text(
        "notes.txt: not an image (unrecognised content; expected JPEG, PNG, TIFF, DICOM, BMP, GIF or WebP)"
    )
    expect(page.locator("#result")).to_be_hidden()

    # a good file clears the error, then a truncated JPEG: 422 with the reader's message
    page.set_input_files("#file", str(xray))
    expect(page.locator("body")).to_have_attribute("data-state", "result", timeout=30_000)
    expect(page.locator("#error")).to_be_hidden()
    data = xray.read_bytes()
    page.set_input_files("#file", files=[{"name": "cut.jpeg", "mimeType": "image/jpeg", "buffer": data[: len(data) // 2]}])
    expect(page.locator("body")).to_have_attribute("data-state", "error", timeout=30_000)
    expect(page.locator("#error-title")).to_have_text("This image cannot be used")
    expect(page.locator("#error-detail")).to_contain_text("cut.jpeg: truncated")
    expect(page.locator("#result")).to_be_hidden()

    expect(page.locator("#limit")).to_have_text("32 MB")


def test_file_over_the_limit_is_refused(small_page):
    """Over the server's limit (2 MB here): the page refuses it before uploading, and so does the server."""
    expect = sync_api.expect
    page = small_page
    expect(page.locator("#limit")).to_have_text("2 MB")
    big = bytes([0xFF, 0xD8, 0xFF]) + bytes(3 * 1024 * 1024)
    page.set_input_files("#file", files=[{"name": "huge.jpg", "mimeType": "image/jpeg", "buffer": big}])
    expect(page.locator("body")).to_have_attribute("data-state", "error")
    expect(page.locator("#error-title")).to_have_text("File too large")
    expect(page.locator("#error-detail")).to_have_text("huge.jpg: 3 MB is over the limit of 2 MB.")

    # Post from the page's own context with fetch, bypassing the page's size check.
    page.evaluate(
        """async () => {
             const form = new FormData();
             form.append('file', new File([new Uint8Array(3 * 1024 * 1024).fill(7)], 'huge.png'), 'huge.png');
             const r = await fetch('/api/v1/predictions', {method: 'POST', body: form});
             window.__status = r.status; window.__body = await r.json();
           }"""
    )
    assert page.evaluate("window.__status") == 413
    assert page.evaluate("window.__body.detail") == "file too large: the limit is 2 MB"
    expect(page.locator("#notice")).to_be_visible()


def test_phone_sized_screen(browser, server, xray, model_dir):
    context = browser.new_context(viewport={"width": 375, "height": 740}, device_scale_factor=2, is_mobile=True, has_touch=True)
    pg = context.new_page()
    try:
        pg.goto(server + "/")
        expected = Predictor(model_dir).predict(xray.read_bytes(), name=xray.name)
        pg.set_input_files("#file", str(xray))
        _expect_result(pg, expected, xray.name)
        # nothing wider than the screen: no sideways scrolling
        assert pg.evaluate("document.documentElement.scrollWidth") <= 375
        # one column: the probabilities sit below the image
        img = pg.locator("#preview").bounding_box()
        bars = pg.locator("#bars").bounding_box()
        assert bars["y"] >= img["y"] + img["height"]
        assert img["width"] <= 375
        # the disclaimer stays visible while scrolling (sticky)
        pg.mouse.wheel(0, 2000)
        pg.wait_for_timeout(200)
        box = pg.locator("#notice").bounding_box()
        assert box is not None and 0 <= box["y"] < 740
        shots = os.environ.get("DEEPHEALTH_SCREENSHOT_DIR")
        if shots:
            pg.evaluate("window.scrollTo(0, 0)")
            pg.screenshot(path=str(Path(shots) / "screenshot-phone.png"), full_page=True)
    finally:
        context.close()


def test_preview_png_matches_what_was_read(page, xray):
    """The page's preview is the decoded image itself (gray values as read, same size)."""
    page.set_input_files("#file", str(xray))
    sync_api.expect(page.locator("body")).to_have_attribute("data-state", "result", timeout=30_000)
    src = page.locator("#preview").get_attribute("src")
    assert src.startswith("data:image/png;base64,")
    shown = np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))))
    read = np.asarray(Image.open(xray).convert("L"))
    np.testing.assert_array_equal(shown, read)


def test_input_gate_refusal_and_warning_banner(browser, gated_model_dir, dataset_root):
    """A refused image shows the reasons and no probabilities; a flagged one a banner above the result."""
    import io

    import numpy as np
    from PIL import Image, ImageDraw

    expect = sync_api.expect
    noise = io.BytesIO()
    Image.fromarray(np.uint8(np.random.default_rng(5).random((256, 256)) * 255)).save(noise, format="PNG")
    film = Image.open(sorted((dataset_root / "val" / "NORMAL").glob("*.jpeg"))[0]).convert("RGB")
    ImageDraw.Draw(film).line([(30, 30), (70, 70)], fill=(255, 0, 0), width=3)  # a red arrow
    arrow = io.BytesIO()
    film.save(arrow, format="PNG")
    with _uvicorn(gated_model_dir) as url:
        context, pg, errors = _open(browser, url)
        pg.set_input_files("#file", files=[{"name": "noise.png", "mimeType": "image/png", "buffer": noise.getvalue()}])
        expect(pg.locator("body")).to_have_attribute("data-state", "error", timeout=30_000)
        expect(pg.locator("#error-title")).to_contain_text("Not classified")
        expect(pg.locator("#error-reasons li").first).to_be_visible()
        expect(pg.locator("#result")).to_be_hidden()  # no probabilities for a refusal
        pg.set_input_files("#file", files=[{"name": "arrow.png", "mimeType": "image/png", "buffer": arrow.getvalue()}])
        expect(pg.locator("body")).to_have_attribute("data-state", "result", timeout=30_000)
        expect(pg.locator("#gate-banner")).to_be_visible()
        expect(pg.locator("#gate-reasons")).to_contain_text("coloured annotations")
        expect(pg.locator("#error")).to_be_hidden()
        context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


def test_spanish_from_accept_language_and_the_language_toggle(browser, server, xray, model_dir):
    """A Spanish browser gets the page, labels, messages and disclaimer in Spanish; the toggle switches."""
    from deephealth.web.i18n import CLASS_DESCRIPTIONS as I18N

    expect = sync_api.expect
    expected = Predictor(model_dir).predict(xray.read_bytes(), name=xray.name)
    context, pg, errors = _open(browser, server, locale="es-ES")
    try:
        assert pg.evaluate("document.documentElement.lang") == "es"
        expect(pg.locator("#notice")).to_contain_text("Apoyo a la decisión, no un diagnóstico.")
        expect(pg.locator(".lang-toggle button[data-lang=es]")).to_have_attribute("aria-pressed", "true")
        pg.set_input_files("#file", str(xray))
        expect(pg.locator("body")).to_have_attribute("data-state", "result", timeout=30_000)
        expect(pg.locator("#pred-label")).to_have_text(I18N["es"][expected.label])
        bars = pg.locator("#bars li")
        for i, name in enumerate(CLASS_NAMES):
            expect(bars.nth(i).locator(".bar-label span").first).to_have_text(f"{i} · {I18N['es'][name]}")
            expect(bars.nth(i)).to_have_attribute("data-class", name)  # machine-readable names stay English
        expect(pg.locator("#image-info")).to_contain_text("Leída como JPEG")
        expect(pg.locator("[data-i18n=probabilities]")).to_have_text("Probabilidades (calibradas)")

        # toggle to English: the static texts switch and the result is asked for again in English
        pg.click(".lang-toggle button[data-lang=en]")
        expect(pg.locator("#notice")).to_contain_text("Decision support, not a diagnosis.")
        expect(pg.locator("#pred-label")).to_have_text(CLASS_DESCRIPTIONS[expected.label], timeout=30_000)
        assert pg.evaluate("document.documentElement.lang") == "en"

        # back to Spanish; an error from the server comes in Spanish too
        pg.click(".lang-toggle button[data-lang=es]")
        expect(pg.locator("#pred-label")).to_have_text(I18N["es"][expected.label], timeout=30_000)
        pg.set_input_files("#file", files=[{"name": "notas.txt", "mimeType": "text/plain", "buffer": b"no es una imagen\n" * 20}])
        expect(pg.locator("body")).to_have_attribute("data-state", "error", timeout=30_000)
        expect(pg.locator("#error-title")).to_have_text("Formato de archivo no admitido")
        expect(pg.locator("#error-detail")).to_have_text(
            "notas.txt: no es una imagen (contenido no reconocido; se espera JPEG, PNG, TIFF, DICOM, BMP, GIF o WebP)"
        )
        # the choice is remembered over a reload
        pg.reload()
        expect(pg.locator("[data-i18n=notice_title]")).to_have_text("Apoyo a la decisión, no un diagnóstico.")
    finally:
        context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


def test_a_borderline_film_shows_the_review_notice_in_both_languages(browser, server, dataset_root, model_dir):
    """A film in the released model's review band (bacterial vs viral balanced): the notice and its reason."""
    from deephealth.web.i18n import translate_text

    film = dataset_root / "test" / "PNEUMONIA" / "person134_bacteria_641.jpeg"  # bacterial 0.494 vs viral 0.485
    expected = Predictor(model_dir).predict(film.read_bytes(), name=film.name)
    if not expected.decision.get("review"):
        pytest.skip("the served model has no review band (the tiny test model)")
    expect = sync_api.expect
    context, pg, errors = _open(browser, server)
    try:
        pg.set_input_files("#file", str(film))
        _expect_result(pg, expected, film.name)
        reason = expected.decision["review_reason"]
        assert reason.startswith("borderline: bacterial vs viral is uncertain (bacterial share 0.505 of P(pneumonia)")
        pg.click(".lang-toggle button[data-lang=es]")
        expect(pg.locator("#review")).to_have_text(
            "Marcado para revisión — " + translate_text(reason, "es") + " "
            + REVIEW_ADVICE["es"]["bacterial_vs_viral"], timeout=30_000)
        expect(pg.locator("#review-reason")).to_contain_text("caso límite: no está claro si es bacteriana o vírica")
        expect(pg.locator("#prediction")).to_have_class(FLAGGED)
    finally:
        context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


def test_a_flagged_no_pneumonia_says_its_label_carries_no_weight(browser, server, xray):
    """A film flagged on pneumonia vs normal (the server's answer edited on its way to the page, so
    any served model will do): the notice says the label is to be given no weight, in English and in
    Spanish, and the label is shown smaller and lighter than an unflagged one."""
    import json

    expect = sync_api.expect
    context, pg, errors = _open(browser, server)
    try:
        with pg.expect_response("**/api/v1/predictions*") as answer:
            pg.set_input_files("#file", str(xray))
        body = answer.value.json()
        expect(pg.locator("body")).to_have_attribute("data-state", "result", timeout=30_000)
        expect(pg.locator("#prediction")).not_to_have_class(FLAGGED)
        style = "e => [parseFloat(getComputedStyle(e).fontSize), getComputedStyle(e).fontWeight]"
        plain_size, plain_weight = pg.locator("#pred-label").evaluate(style)

        # the same answer, now flagged on pneumonia vs normal
        body["label"], body["label_index"], body["label_description"] = "normal", 0, "No pneumonia"
        body["decision"] = (body["decision"] or {}) | {
            "review": True, "review_kind": "pneumonia_vs_normal", "review_reason": "borderline (test)"}
        pg.route("**/api/v1/predictions*",
                 lambda route: route.fulfill(status=200, content_type="application/json", body=json.dumps(body)))

        pg.set_input_files("#file", str(xray))
        expect(pg.locator("#review")).to_have_text(
            "Flagged for review — borderline (test) " + REVIEW_ADVICE["en"]["pneumonia_vs_normal"], timeout=30_000)
        expect(pg.locator("#prediction")).to_have_class(FLAGGED)
        flagged_size, flagged_weight = pg.locator("#pred-label").evaluate(style)
        assert flagged_size < plain_size and int(flagged_weight) < int(plain_weight)
        pg.click(".lang-toggle button[data-lang=es]")
        expect(pg.locator("#review")).to_have_text(
            "Marcado para revisión — borderline (test) " + REVIEW_ADVICE["es"]["pneumonia_vs_normal"],
            timeout=30_000)
        expect(pg.locator("#prediction")).to_have_class(FLAGGED)
        # an unflagged result afterwards is shown plainly again
        pg.unroute("**/api/v1/predictions*")
        pg.set_input_files("#file", str(xray))
        expect(pg.locator("#review")).to_be_hidden(timeout=30_000)
        expect(pg.locator("#prediction")).not_to_have_class(FLAGGED)
    finally:
        context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_api_docs_render_with_the_network_off(browser, server, path):
    """Swagger UI (/docs) and ReDoc (/redoc) render from the server's own assets: every request to
    another host is refused, as on an offline hospital network, and none is needed. The one outside
    request is ReDoc's decorative sidebar-footer logo ("API docs by Redocly"), hard-coded in
    redoc.standalone.js; it hides itself when it cannot load."""
    expect = sync_api.expect
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    outside: list[str] = []

    def only_this_server(route) -> None:
        url = route.request.url
        if url.startswith(server + "/"):
            route.continue_()
        else:
            outside.append(url)
            route.abort("internetdisconnected")

    context.route("**/*", only_this_server)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        pg.goto(server + path)
        if path == "/docs":
            expect(pg.locator(".swagger-ui .info .title")).to_contain_text("Deep Health", timeout=30_000)
            expect(pg.locator(".opblock-summary-path", has_text="/api/v1/predictions").first).to_be_visible()
        else:
            expect(pg.locator(".api-info h1")).to_contain_text("Deep Health", timeout=30_000)
            expect(pg.get_by_text("/api/v1/predictions").first).to_be_attached()
    finally:
        context.close()
    decorative = {"https://cdn.redoc.ly/redoc/logo-mini.svg"} if path == "/redoc" else set()
    assert set(outside) <= decorative, f"{path} asked for outside resources: {outside}"
    assert errors == [], f"JavaScript errors on {path}: {errors}"


def test_page_upload_and_api_docs_behind_a_proxy_under_a_sub_path(browser, model_dir, xray):
    """A prefix-stripping reverse proxy publishes the app under /deephealth/ (DEEPHEALTH_ROOT_PATH set):
    the page loads its CSS and JavaScript, reads /healthz, classifies an upload, and its "API" link
    opens a working Swagger UI, every request under the prefix and through the proxy."""
    expect = sync_api.expect
    predictor = Predictor(model_dir)
    expected = predictor.predict(xray.read_bytes(), name=xray.name)
    prefix = "/deephealth"
    with _uvicorn(model_dir, root_path=prefix) as upstream, prefix_proxy(upstream, prefix) as proxy:
        base = proxy + prefix
        context = browser.new_context(viewport={"width": 1200, "height": 900})
        elsewhere: list[str] = []  # anything not under the prefix (the server's own port included)
        failed: list[str] = []

        def only_under_the_prefix(route) -> None:
            url = route.request.url
            if url.startswith(base + "/") or url.startswith("data:"):
                route.continue_()
            else:
                elsewhere.append(url)
                route.abort("internetdisconnected")

        context.route("**/*", only_under_the_prefix)
        context.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
        pg = context.new_page()
        errors: list[str] = []
        pg.on("pageerror", lambda exc: errors.append(str(exc)))
        try:
            pg.goto(base + "/")
            art = predictor.artifact
            expect(pg.locator("#model-version")).to_have_text(f"{art.name} {art.version}")  # healthz answered
            # the stylesheet applied: the file input is visually hidden by static/style.css
            assert pg.locator("#file").evaluate("e => getComputedStyle(e).position") == "absolute"
            pg.set_input_files("#file", str(xray))
            _expect_result(pg, expected, xray.name)
            pg.click("footer a[href='docs']")
            expect(pg).to_have_url(base + "/docs")
            expect(pg.locator(".swagger-ui .info .title")).to_contain_text("Deep Health", timeout=30_000)
            expect(pg.locator(".opblock-summary-path", has_text="/api/v1/predictions").first).to_be_visible()
            # Swagger UI's server list is the prefix, so "Try it out" calls the API through the proxy
            expect(pg.locator(".servers select option").first).to_have_text(prefix)
        finally:
            context.close()
    assert elsewhere == [], f"requests outside {prefix}/: {elsewhere}"
    assert failed == [], f"failed requests: {failed}"
    assert errors == [], f"JavaScript errors: {errors}"
