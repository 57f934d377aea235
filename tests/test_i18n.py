"""English and Spanish in the API: Accept-Language picks the language of the human-readable texts only."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the web tests need the [web] extra")

from fastapi.testclient import TestClient  # noqa: E402

from deephealth.inference import Predictor  # noqa: E402
from deephealth.labels import CLASS_DESCRIPTIONS, INTENDED_USE  # noqa: E402
from deephealth.web.app import create_app  # noqa: E402
from deephealth.web.i18n import negotiate, translate_text  # noqa: E402
from deephealth.web.settings import Settings  # noqa: E402

URL = "/api/v1/predictions"


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    db = tmp_path_factory.mktemp("i18n") / "audit.sqlite3"
    with TestClient(create_app(Settings(database_url=f"sqlite:///{db}"), predictor=Predictor())) as c:
        yield c


@pytest.mark.parametrize(
    ("header", "lang"),
    [("es-ES,es;q=0.9,en;q=0.8", "es"), ("en-US,es;q=0.5", "en"), ("fr-FR,es;q=0.3", "es"), ("fr", "en"),
     (None, "en"), ("", "en"), ("es;q=0.2, en;q=0.9", "en"), ("ES-mx", "es"), ("*", "en"), ("es;q=abc", "en")],
)
def test_negotiate(header, lang):
    assert negotiate(header) == lang


@pytest.mark.needs_data
def test_spanish_prediction_keeps_machine_fields_english(client, dicom_dir: Path):
    data = (dicom_dir / "cr_chest_pa_rsna.dcm").read_bytes()
    en = client.post(URL, files={"file": ("cr.dcm", data)})
    es = client.post(URL, files={"file": ("cr.dcm", data)}, headers={"Accept-Language": "es-ES,es;q=0.9"})
    assert en.status_code == es.status_code == 200
    assert en.headers["content-language"] == "en" and es.headers["content-language"] == "es"
    e, s = en.json(), es.json()
    assert s["label"] == e["label"] == "normal" and s["label_index"] == 0
    assert s["probabilities"] == e["probabilities"]
    assert [c["name"] for c in s["classes"]] == ["normal", "bacterial", "viral"]
    assert e["label_description"] == CLASS_DESCRIPTIONS["normal"] and s["label_description"] == "Sin neumonía"
    assert [c["description"].split(" (")[0] for c in s["classes"]] == [
        "Sin neumonía", "Neumonía bacteriana", "Neumonía vírica"]
    assert e["intended_use"] == INTENDED_USE and "no es un diagnóstico" in s["intended_use"]
    # the adult age is the gate's warning (issue 18): status warn, the reason translated
    assert e["suitability"]["status"] == s["suitability"]["status"] == "warn"
    assert "adult patient (age 62 years): the model was trained on children aged 1-5 years" in e["suitability"]["reasons"]
    assert "paciente adulto (edad 62 años): el modelo se entrenó con niños de 1 a 5 años" in s["suitability"]["reasons"]


@pytest.mark.needs_data
def test_spanish_error_details(client, dicom_dir: Path):
    r = client.post(URL, files={"file": ("notas.txt", b"hola")}, headers={"Accept-Language": "es"})
    assert r.status_code == 415 and r.headers["content-language"] == "es"
    assert r.json()["detail"] == ("notas.txt: no es una imagen (contenido no reconocido; se espera "
                                  "JPEG, PNG, TIFF, DICOM, BMP, GIF o WebP)")
    r = client.post(URL, files={"file": ("informe.pdf", b"%PDF-1.7\n...")}, headers={"Accept-Language": "es"})
    assert r.status_code == 415
    assert r.json()["detail"] == ("informe.pdf: PDF document: formato no admitido; expórtelo como JPEG o PNG "
                                  "(o envíe el DICOM original)")
    black = io.BytesIO()
    Image.new("L", (256, 256), 0).save(black, format="PNG")
    r = client.post(URL, files={"file": ("negra.png", black.getvalue())}, headers={"Accept-Language": "es"})
    assert r.status_code == 422 and r.json()["detail"].startswith("negra.png: imagen sin contraste (todo negro: ")
    r = client.post(URL, files={"file": ("ct.dcm", (dicom_dir / "ct_small.dcm").read_bytes())},
                    headers={"Accept-Language": "es"})
    assert r.status_code == 422
    assert r.json()["detail"] == ("ct.dcm: la modalidad DICOM CT (computed tomography) no es una radiografía "
                                  "(se espera CR o DX)")
    r = client.post(URL, files={"file": ("vacío.png", b"")}, headers={"Accept-Language": "es"})
    assert r.status_code == 422 and r.json()["detail"] == "vacío.png: archivo vacío (0 bytes)"
    # English stays as it was
    r = client.post(URL, files={"file": ("notes.txt", b"hello")})
    assert r.json()["detail"] == ("notes.txt: not an image (unrecognised content; expected "
                                  "JPEG, PNG, TIFF, DICOM, BMP, GIF or WebP)")


def test_unknown_texts_stay_english():
    text = "x.dcm: some message no pattern knows"
    assert translate_text(text, "es") == text
    assert translate_text("uniform image (every pixel has the same value): no contrast", "es") == (
        "imagen uniforme (todos los píxeles tienen el mismo valor): sin contraste")


def test_a_gate_refusal_in_spanish(client):
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8), "RGB").save(buf, format="PNG")
    r = client.post(URL, files={"file": ("foto.png", buf.getvalue())}, headers={"Accept-Language": "es"})
    assert r.status_code == 422
    body = r.json()
    assert body["detail"].startswith("foto.png: no apto para este modelo: imagen en color (")
    assert body["suitability"]["status"] == "refuse"  # machine field unchanged
    assert body["suitability"]["reasons"][0].startswith("imagen en color (")


def test_form_field_messages_in_spanish(client):
    """The upload's own messages (wrong field name, wrong content type, bad flag) come in Spanish too."""
    es = {"Accept-Language": "es"}
    big = b"\xff\xd8\xff" + bytes(4000)  # an image sent as -F image=@x.jpeg
    r = client.post(URL, files={"image": ("x.jpeg", big)}, headers=es)
    assert r.status_code == 422 and r.headers["content-language"] == "es"
    assert r.json() == {"detail": "no hay archivo: envíe la imagen en un campo de formulario multipart llamado "
                                  "'file', no 'image'"}
    r = client.post(URL, files={"image": ("x.jpeg", b"\xff\xd8\xff")}, headers=es)
    assert r.json() == {"detail": "no hay archivo: envíe la imagen en un campo de formulario multipart llamado 'file'"}
    r = client.post(URL, content=b"\xff\xd8\xff\xe0", headers={"content-type": "image/jpeg", **es})
    assert r.status_code == 415
    assert r.json() == {"detail": "envíe la imagen como multipart/form-data en un campo llamado 'file' "
                                  "(Content-Type recibido: 'image/jpeg')"}
    r = client.post(URL, files={"file": ("x.jpeg", b"\xff\xd8\xff")}, data={"heatmap": "quizás"}, headers=es)
    assert r.status_code == 422
    assert r.json() == {"detail": "el campo de formulario 'heatmap' debe ser true o false, no 'quizás'"}
    r = client.post(URL, files={"file": ("x.jpeg", b"\xff\xd8\xff")}, data={"nota": "x" * 2000}, headers=es)
    assert r.status_code == 422
    assert r.json() == {"detail": "el campo de formulario 'nota' es demasiado largo (límite 1024 bytes)"}


@pytest.mark.needs_data
def test_decision_rule_in_spanish(client, dicom_dir: Path):
    """decision.rule is human-readable: Spanish on request, its numbers kept; the numbers stay machine fields."""
    data = (dicom_dir / "cr_chest_pa_rsna.dcm").read_bytes()
    e = client.post(URL, files={"file": ("cr.dcm", data)}).json()["decision"]
    s = client.post(URL, files={"file": ("cr.dcm", data)}, headers={"Accept-Language": "es"}).json()["decision"]
    texts = ("rule", "review_reason")
    assert {k: v for k, v in s.items() if k not in texts} == {k: v for k, v in e.items() if k not in texts}
    assert s["review_reason"] == (translate_text(e["review_reason"], "es") if e["review"] else None)
    if e["threshold"] is None:
        assert (e["rule"], s["rule"]) == ("the most probable class", "la clase más probable")
    else:
        tau, sens = f"{e['threshold']:.3f}", f"{100 * e['target_sensitivity']:.0f}"
        assert e["rule"] == (f"pneumonia when P(pneumonia) >= {tau}, set on validation films for {sens} % sensitivity; "
                             "then the likelier of bacterial and viral")
        assert s["rule"] == (f"neumonía cuando P(neumonía) >= {tau}, umbral fijado en radiografías de validación "
                             f"para una sensibilidad del {sens} %; después, la más probable de bacteriana y vírica")


def test_every_decision_rule_has_a_spanish_form():
    from deephealth.calibration import describe_decision

    probs = np.array([0.3, 0.5, 0.2])
    for op in (None, {"threshold": 0.8417}, {"threshold": 0.5, "target_sensitivity": 0.9}):
        rule = describe_decision(probs, op)["rule"]
        es = translate_text(rule, "es")
        assert es != rule and "pneumonia" not in es and "then" not in es, rule
    assert translate_text("pneumonia when P(pneumonia) >= 0.842; then the likelier of bacterial and viral", "es") == (
        "neumonía cuando P(neumonía) >= 0.842; después, la más probable de bacteriana y vírica")


# A review band with the bundled 0.3.0's values, written out (no fit): P(pneumonia) 0.841-0.916
# around the threshold 0.8835, bacterial share 0.423-0.577.
REVIEW_OP = {"threshold": 0.8835, "target_sensitivity": 0.95,
             "review_band": {"pneumonia_logit_margin": 0.358, "type_logit_margin": 0.312,
                             "pneumonia_probability_range": [0.841, 0.916], "bacterial_share_range": [0.423, 0.577],
                             "quantile": 0.9}}


def test_both_review_reasons_in_spanish_keep_their_numbers():
    from deephealth.calibration import describe_decision

    # P(pneumonia) 0.87: |logit 0.87 - logit 0.8835| = 0.13 < 0.358, pneumonia vs normal is borderline
    # (0.8835 is printed 0.883: its float lies just below)
    near = describe_decision(np.array([0.13, 0.52, 0.35]), REVIEW_OP)
    assert near["review"] is True
    assert near["review_reason"] == (
        "borderline: P(pneumonia) 0.870 is within the review band 0.841-0.916 around the threshold 0.883; a change of "
        "the film that does not change the diagnosis (re-export, slight rotation) can change the label: have it reviewed")
    assert translate_text(near["review_reason"], "es") == (
        "caso límite: P(neumonía) 0.870 está dentro de la banda de revisión 0.841-0.916 en torno al umbral 0.883; un "
        "cambio de la radiografía que no cambia el diagnóstico (reexportarla, girarla ligeramente) puede cambiar la "
        "etiqueta: solicite su revisión")
    # called pneumonia (0.98), |ln(0.50 / 0.48)| = 0.04 < 0.312: bacterial vs viral is borderline
    kind = describe_decision(np.array([0.02, 0.50, 0.48]), REVIEW_OP)
    assert kind["review"] is True
    assert kind["review_reason"] == (
        "borderline: bacterial vs viral is uncertain (bacterial share 0.510 of P(pneumonia), review band 0.423-0.577); "
        "the kind of pneumonia can change with a benign change of the film: have it reviewed")
    assert translate_text(kind["review_reason"], "es") == (
        "caso límite: no está claro si es bacteriana o vírica (fracción bacteriana 0.510 de P(neumonía), banda de "
        "revisión 0.423-0.577); el tipo de neumonía puede cambiar con un cambio inocuo de la radiografía: solicite su "
        "revisión")
    clear = describe_decision(np.array([0.02, 0.90, 0.08]), REVIEW_OP)
    assert (clear["review"], clear["review_reason"]) == (False, None)


def test_localize_prediction_translates_the_review_reason_only():
    from deephealth.calibration import describe_decision
    from deephealth.web.i18n import localize_prediction

    decision = describe_decision(np.array([0.02, 0.50, 0.48]), REVIEW_OP)
    body = {"label": "bacterial", "label_description": "x", "classes": [], "warnings": [], "decision": decision,
            "intended_use": INTENDED_USE}
    es = localize_prediction(body, "es")["decision"]
    assert es["review"] is True and es["review_reason"].startswith("caso límite: no está claro si es bacteriana")
    assert es["rule"].startswith("neumonía cuando P(neumonía) >= 0.883")
    assert {k: v for k, v in es.items() if k not in ("rule", "review_reason")} == {
        k: v for k, v in decision.items() if k not in ("rule", "review_reason")}
    assert body["decision"] is decision and decision["review_reason"].startswith("borderline:")  # not changed in place
    none = localize_prediction({**body, "decision": describe_decision(np.array([0.9, 0.05, 0.05]), REVIEW_OP)}, "es")
    assert none["decision"]["review"] is False and none["decision"]["review_reason"] is None


@pytest.mark.parametrize(("age", "edad"), [("45 years", "45 años"), ("1 year", "1 año"), ("240 months", "240 meses"),
                                           ("1200 weeks", "1200 semanas"), ("9000 days", "9000 días"),
                                           ("garbage", "garbage")])
def test_the_adult_age_is_translated_with_its_unit(age: str, edad: str):
    from deephealth.web.i18n import translate_text

    reason = f"adult patient (age {age}): the model was trained on children aged 1-5 years"
    spanish = f"paciente adulto (edad {edad}): el modelo se entrenó con niños de 1 a 5 años"
    assert translate_text(reason, "es") == spanish
    # inside a refusal that joins several reasons (the gate's phrases are replaced where they occur)
    joined = f"x.dcm: not suitable for this model: {reason}; another reason"
    assert spanish in translate_text(joined, "es")
    assert translate_text(reason, "en") == reason


def test_the_cut_jpeg_refusal_is_translated():
    from deephealth.web.i18n import translate_text

    text = ("cut.jpeg: truncated or corrupt JPEG file (its image data ends early: the bottom 64 of 224 rows are "
            "missing, decoded as flat grey 128)")
    assert translate_text(text, "es") == (
        "cut.jpeg: archivo JPEG truncado o dañado (sus datos de imagen terminan antes de tiempo: faltan las 64 "
        "filas inferiores de 224, decodificadas como gris uniforme 128)")
