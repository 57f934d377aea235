"""English and Spanish for the API's human-readable texts; the language comes from ``Accept-Language``.

Translated: ``detail`` of errors, ``warnings``, the input gate's ``suitability.reasons``,
``decision.rule`` and ``decision.review_reason``, ``label_description``, class ``description`` and
``intended_use``. Machine-readable fields (``label``, ``label_index``, probabilities' keys, codes,
``decision.review``) stay English whatever the language. The page (``static/app.js``) has its own
strings for the same two languages and sends the chosen language as ``Accept-Language``.

Texts that come from the readers (warnings, unreadable-file errors) are written in English there;
:func:`translate_text` translates the known ones by pattern (:data:`_PATTERNS`) and leaves any
other text in English rather than guess.
"""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request

from deephealth import labels

LANGUAGES: tuple[str, ...] = ("en", "es")
"""Supported languages (ISO 639-1), the first being the default."""
DEFAULT_LANGUAGE = "en"

CLASS_DESCRIPTIONS: dict[str, dict[str, str]] = {
    "en": dict(labels.CLASS_DESCRIPTIONS),
    "es": {
        "normal": "Sin neumonía",
        "bacterial": "Neumonía bacteriana (p. ej., Streptococcus)",
        "viral": "Neumonía vírica (p. ej., gripe, COVID-19)",
    },
}
"""Human-readable class names per language."""

INTENDED_USE: dict[str, str] = {
    "en": labels.INTENDED_USE,
    "es": (
        "Apoyo a la decisión para clínicos formados que leen radiografías de tórax pediátricas; no es "
        "un diagnóstico ni un producto sanitario. Todo resultado debe revisarlo un clínico cualificado."
    ),
}
"""The decision-support notice per language."""

MESSAGES: dict[str, dict[str, str]] = {
    "audit_off": {
        "en": "the audit API is off: set DEEPHEALTH_ADMIN_API_KEY to turn it on",
        "es": "la API de auditoría está desactivada: defina DEEPHEALTH_ADMIN_API_KEY para activarla",
    },
    "audit_key": {
        "en": "missing or wrong admin API key (send Authorization: Bearer <key>)",
        "es": "falta la clave de administración o no es correcta (envíe Authorization: Bearer <clave>)",
    },
    "audit_disabled": {
        "en": "the audit trail is disabled (DEEPHEALTH_AUDIT=false)",
        "es": "el registro de auditoría está desactivado (DEEPHEALTH_AUDIT=false)",
    },
    "audit_unavailable": {
        "en": "the audit database is unavailable; see the server log",
        "es": "la base de datos de auditoría no está disponible; consulte el registro del servidor",
    },
}
"""Messages of our own, by key and language."""

_NO_CONTRAST = {"all black": "todo negro", "all white": "todo blanco"}


def _grey(what: str) -> str:
    """``all black`` / ``all white`` / ``flat grey, level N of 255`` in Spanish."""
    m = re.fullmatch(r"flat grey, level (\d+) of 255", what)
    return f"gris uniforme, nivel {m[1]} de 255" if m else _NO_CONTRAST.get(what, what)


_AGE_UNITS_ES = {"year": "año", "years": "años", "month": "mes", "months": "meses",
                 "week": "semana", "weeks": "semanas", "day": "día", "days": "días"}


def _age(text: str) -> str:
    """An age as the gate writes it (``"45 years"``, ``"1 month"``...) in Spanish; other text unchanged."""
    m = re.fullmatch(r"([\d.]+) (years?|months?|weeks?|days?)", text)
    return f"{m[1]} {_AGE_UNITS_ES[m[2]]}" if m else text


# (English regular expression, Spanish replacement: a re.sub template or a function of the match)
# for texts made elsewhere in English: the upload checks (deephealth.web.upload, routes) and the
# readers' warnings and errors.
_PATTERNS: tuple[tuple[re.Pattern[str], Any], ...] = tuple(
    (re.compile(p), r)
    for p, r in (
        (r"^(?P<f>.+): empty file \(0 bytes\)$", r"\g<f>: archivo vacío (0 bytes)"),
        (r"^(?P<f>.+): (?P<w>.+) is not supported: export it as JPEG or PNG \(or send the original DICOM\)$",
         r"\g<f>: \g<w>: formato no admitido; expórtelo como JPEG o PNG (o envíe el DICOM original)"),
        (r"^(?P<f>.+): DICOM modality (?P<m>\S+) \((?P<n>[^)]+)\) is not a radiograph \(expected CR or DX\)$",
         r"\g<f>: la modalidad DICOM \g<m> (\g<n>) no es una radiografía (se espera CR o DX)"),
        (r"^(?P<f>.+): file too large: the limit is (?P<l>.+)$", r"\g<f>: archivo demasiado grande: el límite es \g<l>"),
        (r"^file too large: the limit is (?P<l>.+)$", r"archivo demasiado grande: el límite es \g<l>"),
        (r"^request too large: the file limit is (?P<l>.+)$",
         r"solicitud demasiado grande: el límite del archivo es \g<l>"),
        (r"^no file: send the image in a multipart form field named (?P<n>'[^']*'), not (?P<o>.+)$",
         r"no hay archivo: envíe la imagen en un campo de formulario multipart llamado \g<n>, no \g<o>"),
        (r"^no file: send the image in a multipart form field named (?P<n>.+)$",
         r"no hay archivo: envíe la imagen en un campo de formulario multipart llamado \g<n>"),
        (r"^send the image as multipart/form-data with a field named (?P<n>'[^']*') \(got Content-Type (?P<c>.+)\)$",
         r"envíe la imagen como multipart/form-data en un campo llamado \g<n> (Content-Type recibido: \g<c>)"),
        (r"^form field (?P<n>.+) is too long \(limit (?P<l>\d+) bytes\)$",
         r"el campo de formulario \g<n> es demasiado largo (límite \g<l> bytes)"),
        (r"^form field (?P<n>'[^']*') must be true or false, got (?P<v>.+)$",
         r"el campo de formulario \g<n> debe ser true o false, no \g<v>"),
        # decision.rule (deephealth.calibration.describe_decision)
        (r"^the most probable class$", r"la clase más probable"),
        (r"^pneumonia when P\(pneumonia\) >= (?P<t>[\d.]+), set on validation films for (?P<s>\d+) % sensitivity; "
         r"then the likelier of bacterial and viral$",
         r"neumonía cuando P(neumonía) >= \g<t>, umbral fijado en radiografías de validación para una sensibilidad "
         r"del \g<s> %; después, la más probable de bacteriana y vírica"),
        (r"^pneumonia when P\(pneumonia\) >= (?P<t>[\d.]+); then the likelier of bacterial and viral$",
         r"neumonía cuando P(neumonía) >= \g<t>; después, la más probable de bacteriana y vírica"),
        # decision.review_reason (deephealth.calibration.review_reason)
        (r"^borderline: P\(pneumonia\) (?P<p>[\d.]+) is within the review band (?P<lo>[\d.]+)-(?P<hi>[\d.]+) around "
         r"the threshold (?P<t>[\d.]+); a change of the film that does not change the diagnosis \(re-export, slight "
         r"rotation\) can change the label: have it reviewed$",
         r"caso límite: P(neumonía) \g<p> está dentro de la banda de revisión \g<lo>-\g<hi> en torno al umbral "
         r"\g<t>; un cambio de la radiografía que no cambia el diagnóstico (reexportarla, girarla ligeramente) puede "
         r"cambiar la etiqueta: solicite su revisión"),
        (r"^borderline: bacterial vs viral is uncertain \(bacterial share (?P<s>[\d.]+) of P\(pneumonia\), review "
         r"band (?P<lo>[\d.]+)-(?P<hi>[\d.]+)\); the kind of pneumonia can change with a benign change of the film: "
         r"have it reviewed$",
         r"caso límite: no está claro si es bacteriana o vírica (fracción bacteriana \g<s> de P(neumonía), banda de "
         r"revisión \g<lo>-\g<hi>); el tipo de neumonía puede cambiar con un cambio inocuo de la radiografía: "
         r"solicite su revisión"),
        (r"^(?P<f>.+): image too small to diagnose: (?P<s>\S+) px \(the shorter side must be at least (?P<m>\d+) px\)$",
         r"\g<f>: imagen demasiado pequeña para diagnosticar: \g<s> px (el lado menor debe tener al menos \g<m> px)"),
        (r"^(?P<f>.+): truncated or corrupt JPEG file \(no end-of-image marker after the image data\)$",
         r"\g<f>: archivo JPEG truncado o dañado (falta el marcador de fin de imagen tras los datos)"),
        (r"^(?P<f>.+): truncated or corrupt JPEG file \(its image data ends early: the bottom (?P<n>\d+) of "
         r"(?P<h>\d+) rows are missing, decoded as flat grey 128\)$",
         r"\g<f>: archivo JPEG truncado o dañado (sus datos de imagen terminan antes de tiempo: faltan las \g<n> "
         r"filas inferiores de \g<h>, decodificadas como gris uniforme 128)"),
        (r"^(?P<f>.+): truncated or corrupt (?P<t>\S+) file(?P<r>.*)$", r"\g<f>: archivo \g<t> truncado o dañado\g<r>"),
        (r"^(?P<f>.+): truncated DICOM file: the (?P<p>.+) is cut short$",
         r"\g<f>: archivo DICOM truncado: \g<p> está incompleto"),
        (r"^(?P<f>.+): not an image \(unrecognised content; expected (?P<x>.+)\)$",
         lambda m: f"{m['f']}: no es una imagen (contenido no reconocido; se espera {m['x'].replace(' or ', ' o ')})"),
        (r"^(?P<f>.+): image has no contrast \((?P<w>all black|all white|flat grey, level \d+ of 255): every pixel "
         r"has the same grey level\); not a usable radiograph$",
         lambda m: f"{m['f']}: imagen sin contraste ({_grey(m['w'])}: todos los píxeles tienen el mismo nivel de "
                   "gris); no es una radiografía utilizable"),
        (r"^(?P<f>.+): image has no contrast \((?P<w>all black|all white|flat grey, level \d+ of 255): the darkest "
         r"and brightest pixels differ by only (?P<d>\d+) of 255 grey levels\); not a usable radiograph$",
         lambda m: f"{m['f']}: imagen sin contraste ({_grey(m['w'])}: los píxeles más oscuros y más claros solo "
                   f"difieren en {m['d']} de 255 niveles de gris); no es una radiografía utilizable"),
        (r"^uniform border removed before analysis: rows (?P<r>\S+) and columns (?P<c>\S+) of the (?P<s>\S+) "
         r"decoded image were analysed$",
         r"borde uniforme eliminado antes del análisis: se analizaron las filas \g<r> y las columnas \g<c> "
         r"de la imagen decodificada de \g<s>"),
        (r"^(?P<f>.+): DICOM file has no pixel data \(7FE0,0010\); it is not an image$",
         r"\g<f>: el archivo DICOM no tiene datos de píxel (7FE0,0010); no es una imagen"),
        (r"^(?P<f>.+): multi-frame (?P<t>\S+) \((?P<n>\d+) frames\); send a single radiograph image$",
         r"\g<f>: \g<t> de varios fotogramas (\g<n>); envíe una sola radiografía"),
        (r"^adult patient \(age (?P<a>[^)]+)\): the model was trained on children aged 1-5 years$",
         lambda m: f"paciente adulto (edad {_age(m['a'])}): el modelo se entrenó con niños de 1 a 5 años"),
        (r"^MONOCHROME1 \(low values bright\): inverted so bright means dense$",
         r"MONOCHROME1 (valores bajos claros): invertida para que claro signifique denso"),
        (r"^uniform image \(every pixel has the same value\): no contrast$",
         r"imagen uniforme (todos los píxeles tienen el mismo valor): sin contraste"),
        (r"^DICOM \(0008,0060\) Modality is missing: cannot confirm this is a radiograph$",
         r"falta la modalidad DICOM (0008,0060): no se puede confirmar que sea una radiografía"),
        (r"^DICOM modality (?P<m>\S+) \(other\): cannot confirm this is a chest radiograph$",
         r"modalidad DICOM \g<m> (otra): no se puede confirmar que sea una radiografía de tórax"),
        (r"^colour image \(channels differ by (?P<d>[\d.]+) grey levels on average\): it may be a photo rather than "
         r"a radiograph; converted to grayscale$",
         r"imagen en color (los canales difieren en \g<d> niveles de gris de media): puede ser una foto y no una "
         r"radiografía; convertida a escala de grises"),
        (r"^EXIF orientation (?P<o>\d+) applied \(image rotated/flipped upright\)$",
         r"orientación EXIF \g<o> aplicada (imagen girada o volteada)"),
        (r"^transparent pixels were composited over black$", r"los píxeles transparentes se compusieron sobre negro"),
    )
)


# Phrases of the input gate's reasons (deephealth.gate), replaced wherever they occur in a text
# (a refusal joins several reasons with "; ", and some reasons contain "; " themselves).
_GATE_PHRASES: tuple[tuple[re.Pattern[str], Any], ...] = tuple(
    (re.compile(p), r)
    for p, r in (
        (r": not suitable for this model: ", r": no apto para este modelo: "),
        (r"it looks like an inverted \(negative\) chest film: bone dark, air bright; send the film with bone white",
         r"parece una radiografía de tórax invertida (negativo): hueso oscuro, aire claro; envíela con el hueso blanco"),
        (r"it looks like a chest film rotated by 90 degrees clockwise; rotate it upright and send it again",
         r"parece una radiografía de tórax girada 90 grados en sentido horario; enderécela y envíela de nuevo"),
        (r"it looks like a chest film turned upside down \(rotated by 180 degrees\); rotate it upright and send it again",
         r"parece una radiografía de tórax boca abajo (girada 180 grados); enderécela y envíela de nuevo"),
        (r"it looks like a chest film rotated by 90 degrees counter-clockwise; rotate it upright and send it again",
         r"parece una radiografía de tórax girada 90 grados en sentido antihorario; enderécela y envíela de nuevo"),
        (r"it does not look like a frontal chest radiograph \(e\.g\. a photo, document, screenshot, lateral view, "
         r"CT slice or another body part\)",
         r"no parece una radiografía de tórax frontal (p. ej., una foto, un documento, una captura de pantalla, una "
         r"proyección lateral, un corte de TC u otra parte del cuerpo)"),
        (r"it looks like a chest film turned on its side \(rotated by 90 degrees\); rotate it upright and send it again",
         r"parece una radiografía de tórax tumbada (girada 90 grados); enderécela y envíela de nuevo"),
        (r"\(P\(frontal chest film\) = ([\d.]+), two-lung layout ([\d.-]+)\)",
         r"(P(radiografía de tórax frontal) = \1, disposición de dos pulmones \2)"),
        # the header checks (deephealth.gate.header_checks)
        (r"DICOM View Position \(0018,5101\) is (.+?): a lateral view; the model reads only frontal \(AP or PA\) "
         r"chest films",
         r"la posición de proyección DICOM (0018,5101) es \1: una proyección lateral; el modelo solo lee "
         r"radiografías de tórax frontales (AP o PA)"),
        (r"DICOM View Position \(0018,5101\) is (.+?): an oblique view; the model reads only frontal \(AP or PA\) "
         r"chest films",
         r"la posición de proyección DICOM (0018,5101) es \1: una proyección oblicua; el modelo solo lee "
         r"radiografías de tórax frontales (AP o PA)"),
        (r"DICOM Body Part Examined \(0018,0015\) is (.+?): not the chest",
         r"la parte del cuerpo examinada DICOM (0018,0015) es \1: no es el tórax"),
        (r"DICOM SOP Class UID \(0008,0016\) is (.+?) without a frontal chest header \(Body Part Examined CHEST "
         r"and View Position AP or PA\)",
         r"la clase SOP DICOM (0008,0016) es \1 sin una cabecera de tórax frontal (Body Part Examined CHEST y "
         r"View Position AP o PA)"),
        (r"DICOM SOP Class UID \(0008,0016\) is (.+?): not a radiograph \(expected CR or DX image storage\)",
         r"la clase SOP DICOM (0008,0016) es \1: no es una radiografía (se espera almacenamiento de imagen CR o DX)"),
        (r"adult patient \(age ([^)]+)\): the model was trained on children aged 1-5 years",
         lambda m: f"paciente adulto (edad {_age(m[1])}): el modelo se entrenó con niños de 1 a 5 años"),
        # the view check (deephealth.gate.lung_layout)
        (r"not a frontal chest film: no two lung fields either side of the mediastinum \(two-lung layout ([\d.-]+), "
         r"below ([\d.]+)\); a lateral view or another projection\? send the frontal \(PA or AP\) film",
         r"no es una radiografía de tórax frontal: no hay dos campos pulmonares a ambos lados del mediastino "
         r"(disposición de dos pulmones \1, por debajo de \2); ¿una proyección lateral u otra proyección? envíe "
         r"la radiografía frontal (PA o AP)"),
        (r"not a frontal chest film: no two lung fields either side of the mediastinum \(two-lung layout ([\d.-]+), "
         r"below ([\d.]+), and the network's features are unusual too\); a lateral view or another projection\? "
         r"send the frontal \(PA or AP\) film",
         r"no es una radiografía de tórax frontal: no hay dos campos pulmonares a ambos lados del mediastino "
         r"(disposición de dos pulmones \1, por debajo de \2, y las características de la red también son "
         r"inusuales); ¿una proyección lateral u otra proyección? envíe la radiografía frontal (PA o AP)"),
        (r"unusual layout for a frontal chest film \(two-lung layout ([\d.-]+), below ([\d.]+)\): check that this "
         r"is a frontal \(PA or AP\) view",
         r"disposición inusual para una radiografía de tórax frontal (disposición de dos pulmones \1, por debajo "
         r"de \2): compruebe que sea una proyección frontal (PA o AP)"),
        (r"colour image \(channels differ by ([\d.]+) grey levels on average\): it may be a photo rather than a "
         r"radiograph; converted to grayscale",
         r"imagen en color (los canales difieren en \1 niveles de gris de media): puede ser una foto y no una "
         r"radiografía; convertida a escala de grises"),
        (r"\(P\(frontal chest film\) = ([\d.]+), below ([\d.]+)\)",
         r"(P(radiografía de tórax frontal) = \1, por debajo de \2)"),
        (r"\(P\(frontal chest film\) = ([\d.]+)\)", r"(P(radiografía de tórax frontal) = \1)"),
        # feature-distance reasons name one or both scores: "(feature distance X, limit Y, feature residual...)"
        (r"unlike the chest films the model was trained on \(",
         r"distinta de las radiografías de tórax con las que se entrenó el modelo ("),
        (r"unusual for the chest films the model was trained on \(",
         r"inusual para las radiografías de tórax con las que se entrenó el modelo ("),
        (r"feature distance ([\d.]+), refusal limit ([\d.]+)", r"distancia de características \1, límite de rechazo \2"),
        (r"feature residual ([\d.]+), refusal limit ([\d.]+)", r"residuo de características \1, límite de rechazo \2"),
        (r"feature distance ([\d.]+), limit ([\d.]+)", r"distancia de características \1, límite \2"),
        (r"feature residual ([\d.]+), limit ([\d.]+)", r"residuo de características \1, límite \2"),
        (r"\): check the result with care", r"): revise el resultado con cuidado"),
        (r"featureless image \(detail ([\d.]+) grey levels, radiographs have 2\.4 or more\): a smooth gradient or a "
         r"heavily blurred picture, no visible anatomy",
         r"imagen sin estructura (detalle \1 niveles de gris; las radiografías tienen 2,4 o más): un degradado suave "
         r"o una imagen muy borrosa, sin anatomía visible"),
        (r"burnt-in coloured annotations \(arrows, letters or marks; up to (\d+) % of a region is coloured\): they "
         r"hide anatomy and may mislead the model",
         r"anotaciones en color incrustadas (flechas, letras o marcas; hasta un \1 % de una zona en color): ocultan "
         r"anatomía y pueden confundir al modelo"),
        (r"colour image \((\d+) % of pixels are coloured\): a photo or drawing, not a radiograph",
         r"imagen en color (\1 % de píxeles en color): una foto o un dibujo, no una radiografía"),
        (r"near-blank image \(98 % of pixels within (\d+) grey levels\): no visible anatomy",
         r"imagen casi en blanco (98 % de los píxeles dentro de \1 niveles de gris): sin anatomía visible"),
        (r"unusual shape for a chest film \(([^)]*)\); the model squashes it to a square",
         r"forma inusual para una radiografía de tórax (\1); el modelo la comprime a un cuadrado"),
        (r"unusual shape for a chest film \(([^)]*)\): a screenshot strip or panorama\?",
         r"forma inusual para una radiografía de tórax (\1): ¿una tira de captura de pantalla o una panorámica?"),
    )
)


def negotiate(accept_language: str | None) -> str:
    """The best supported language for an ``Accept-Language`` header (RFC 9110 12.5.4).

    Args:
        accept_language: the header's value, e.g. ``"es-ES,es;q=0.9,en;q=0.8"``; ``None`` or empty.

    Returns:
        ``"en"`` or ``"es"``: the supported primary language with the highest ``q`` (the first
        listed on a tie); :data:`DEFAULT_LANGUAGE` if none is supported or the header is absent.
    """
    best, best_q = DEFAULT_LANGUAGE, 0.0
    for i, part in enumerate((accept_language or "").split(",")):
        tag, _, params = part.strip().partition(";")
        lang = tag.strip().lower().split("-")[0]
        q = 1.0
        m = re.search(r"q\s*=\s*([^;,]*)", params)
        if m:  # a malformed weight ignores the entry
            try:
                q = float(m.group(1))
            except ValueError:
                q = 0.0
        if lang == "*" and q > best_q:
            best, best_q = DEFAULT_LANGUAGE, q
        elif lang in LANGUAGES and q > best_q:
            best, best_q = lang, q
    return best


def request_language(request: Request) -> str:
    """The language of a request, from its ``Accept-Language`` header."""
    return negotiate(request.headers.get("accept-language"))


def translate_text(text: str, lang: str) -> str:
    """A text made in English, in ``lang`` when a pattern knows it; otherwise unchanged."""
    if lang == "en":
        return text
    for pattern, repl in _PATTERNS:
        if pattern.match(text):
            return pattern.sub(repl, text, count=1)
    for pattern, repl in _GATE_PHRASES:
        text = pattern.sub(repl, text)
    return text


def tr(request: Request, key: str, **params: Any) -> str:
    """Message ``key`` of :data:`MESSAGES` in the request's language, formatted with ``params``."""
    return MESSAGES[key][request_language(request)].format(**params)


def localize_prediction(body: dict[str, Any], lang: str) -> dict[str, Any]:
    """The prediction response with its human-readable texts in ``lang`` (machine fields unchanged).

    Changes ``label_description``, each ``classes[].description``, ``warnings``,
    ``suitability.reasons``, ``decision.rule``, ``decision.review_reason`` and ``intended_use``;
    returns ``body`` itself for English.
    """
    if lang == "en":
        return body
    names = CLASS_DESCRIPTIONS[lang]
    body = dict(body)
    body["label_description"] = names.get(body["label"], body["label_description"])
    body["classes"] = [{**c, "description": names.get(c["name"], c["description"])} for c in body["classes"]]
    body["warnings"] = [translate_text(w, lang) for w in body["warnings"]]
    if isinstance(body.get("suitability"), dict):
        gate = body["suitability"]
        body["suitability"] = {**gate, "reasons": [translate_text(r, lang) for r in gate.get("reasons") or []]}
    if isinstance(body.get("decision"), dict):
        d = dict(body["decision"])
        for key in ("rule", "review_reason"):  # review_reason is None unless the film is borderline
            if isinstance(d.get(key), str):
                d[key] = translate_text(d[key], lang)
        body["decision"] = d
    body["intended_use"] = INTENDED_USE[lang]
    return body
