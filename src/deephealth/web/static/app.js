// Deep Health upload page: sends the file to POST /api/v1/predictions and shows the result.
// Plain JavaScript, no build step, no external resources. URLs are relative, so the app also
// works behind a reverse proxy under a sub-path.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const fileInput = $("file");
  const dropzone = $("dropzone");
  const statusEl = $("status");
  const errorBox = $("error");
  const resultEl = $("result");
  const overlay = $("overlay");
  const toggle = $("heatmap-toggle");
  let maxUploadBytes = 32 * 1024 * 1024;

  // English and Spanish. The server translates its own texts (class names, warnings, error
  // details) after the Accept-Language header that upload() sends; machine fields stay English.
  const STRINGS = {
    en: {
      title: "Deep Health — pediatric chest X-ray decision support",
      tagline: "Pediatric chest X-ray: no pneumonia, bacterial or viral pneumonia",
      notice_title: "Decision support, not a diagnosis.",
      notice_body: "This tool is not a medical device. Every result must be reviewed by a qualified clinician " +
        "together with the patient's history and examination.",
      upload_label: "Upload a chest X-ray",
      dz_main: "Drop a chest X-ray here, or ",
      dz_link: "choose a file",
      dz_sub_before: "JPEG, PNG, TIFF, DICOM, BMP, GIF or WebP, up to ",
      dz_sub_after: ". The image is not stored.",
      error_title: "File rejected",
      result_for: "Result for ",
      alt_preview: "The X-ray as the model read it",
      alt_overlay: "Heatmap of the regions that drove the prediction, over the X-ray",
      show_heatmap: "Show heatmap",
      class_index: "class index",
      scale: "Scale: 0 no pneumonia · 1 bacterial pneumonia (e.g. Streptococcus) · 2 viral pneumonia (e.g. influenza, Covid-19)",
      probabilities: "Probabilities (calibrated)",
      warnings: "Warnings",
      heatmap_note: "The heatmap marks the image regions that most raised the score of the predicted class " +
        "(a class activation map). It is not an outline of a lesion.",
      model: "Model ",
      model_card: "model card",
      t413: "File too large",
      t415: "Unsupported file format",
      t422: "This image cannot be used",
      failed: "Request failed",
      unreachable: "Could not reach the server",
      unreachable_detail: "The upload did not complete. Check the connection and try again.",
      over_limit: (name, size, limit) => name + ": " + size + " is over the limit of " + limit + ".",
      reading: (name) => "Reading " + name + "…",
      done: (ms) => "Done in " + ms + " ms.",
      read_as: "Read as ",
      unavailable: "unavailable (server not ready)",
      gate_refused: "Not classified: this image does not look like a frontal chest X-ray the model can read",
      gate_refused_detail: (name) => name + " was not analysed. Reasons:",
      gate_banner_title: "Check this image: it may not suit the model",
      gate_banner_note: "The result below may be unreliable for this image.",
      decision: (p, thr, sens) => "Probability of pneumonia " + p + " %. The model calls pneumonia from " + thr +
        " % (its operating point, set on validation films for " + sens + " % sensitivity), so the label can " +
        "differ from the largest bar.",
      review_title: "Flagged for review — ",
      // What to do with a flagged film (README): by decision.review_kind.
      review_advice_pneumonia_vs_normal: "Give this label no weight: read the film yourself (or ask a radiologist) " +
        "before acting. A flagged “no pneumonia” is not a negative result.",
      review_advice_bacterial_vs_viral: "The pneumonia call stands; only bacterial vs viral is undecided: give the " +
        "kind of pneumonia no weight.",
    },
    es: {
      title: "Deep Health — apoyo a la decisión en radiografías de tórax pediátricas",
      tagline: "Radiografía de tórax pediátrica: sin neumonía, neumonía bacteriana o vírica",
      notice_title: "Apoyo a la decisión, no un diagnóstico.",
      notice_body: "Esta herramienta no es un producto sanitario. Todo resultado debe revisarlo un clínico " +
        "cualificado junto con la historia clínica y la exploración del paciente.",
      upload_label: "Subir una radiografía de tórax",
      dz_main: "Suelte aquí una radiografía de tórax o ",
      dz_link: "elija un archivo",
      dz_sub_before: "JPEG, PNG, TIFF, DICOM, BMP, GIF o WebP, hasta ",
      dz_sub_after: ". La imagen no se guarda.",
      error_title: "Archivo rechazado",
      result_for: "Resultado de ",
      alt_preview: "La radiografía tal como la leyó el modelo",
      alt_overlay: "Mapa de calor de las regiones que motivaron la predicción, sobre la radiografía",
      show_heatmap: "Mostrar mapa de calor",
      class_index: "índice de clase",
      scale: "Escala: 0 sin neumonía · 1 neumonía bacteriana (p. ej., Streptococcus) · 2 neumonía vírica (p. ej., gripe, COVID-19)",
      probabilities: "Probabilidades (calibradas)",
      warnings: "Advertencias",
      heatmap_note: "El mapa de calor marca las regiones de la imagen que más elevaron la puntuación de la clase " +
        "predicha (un mapa de activación de clase). No es el contorno de una lesión.",
      model: "Modelo ",
      model_card: "ficha del modelo",
      t413: "Archivo demasiado grande",
      t415: "Formato de archivo no admitido",
      t422: "Esta imagen no se puede usar",
      failed: "La solicitud falló",
      unreachable: "No se pudo conectar con el servidor",
      unreachable_detail: "El envío no se completó. Compruebe la conexión e inténtelo de nuevo.",
      over_limit: (name, size, limit) => name + ": " + size + " supera el límite de " + limit + ".",
      reading: (name) => "Leyendo " + name + "…",
      done: (ms) => "Hecho en " + ms + " ms.",
      read_as: "Leída como ",
      unavailable: "no disponible (el servidor no está listo)",
      gate_refused: "No clasificada: esta imagen no parece una radiografía frontal de tórax que el modelo pueda leer",
      gate_refused_detail: (name) => name + " no se analizó. Motivos:",
      gate_banner_title: "Revise esta imagen: puede no ser adecuada para el modelo",
      gate_banner_note: "El resultado de abajo puede no ser fiable para esta imagen.",
      decision: (p, thr, sens) => "Probabilidad de neumonía " + p + " %. El modelo indica neumonía a partir de " +
        thr + " % (su punto de operación, fijado en radiografías de validación para una sensibilidad del " + sens +
        " %), así que la etiqueta puede no coincidir con la barra más larga.",
      review_title: "Marcado para revisión — ",
      review_advice_pneumonia_vs_normal: "No dé ningún peso a esta etiqueta: lea usted la radiografía (o consulte " +
        "a un radiólogo) antes de actuar. Un «sin neumonía» marcado no es un resultado negativo.",
      review_advice_bacterial_vs_viral: "La indicación de neumonía se mantiene; solo queda sin decidir si es " +
        "bacteriana o vírica: no dé peso al tipo de neumonía.",
    },
  };
  const LANG_KEY = "deephealth.lang";
  let lang = initialLanguage();
  let lastFile = null;

  function initialLanguage() {
    try {
      const saved = window.localStorage.getItem(LANG_KEY);
      if (saved && STRINGS[saved]) return saved;
    } catch (err) {
      // storage may be blocked; fall back to the browser's languages
    }
    for (const tag of navigator.languages || [navigator.language || "en"]) {
      const primary = String(tag).toLowerCase().split("-")[0];
      if (STRINGS[primary]) return primary;
    }
    return "en";
  }

  function t(key) {
    return STRINGS[lang][key];
  }

  function applyLanguage() {
    document.documentElement.lang = lang;
    document.querySelectorAll("[data-i18n]").forEach((node) => {
      node.textContent = t(node.dataset.i18n);
    });
    document.querySelectorAll("[data-i18n-alt]").forEach((node) => node.setAttribute("alt", t(node.dataset.i18nAlt)));
    document.querySelectorAll("[data-i18n-aria-label]").forEach((node) =>
      node.setAttribute("aria-label", t(node.dataset.i18nAriaLabel))
    );
    document.querySelectorAll(".lang-toggle button").forEach((b) =>
      b.setAttribute("aria-pressed", String(b.dataset.lang === lang))
    );
  }

  function setLanguage(next) {
    if (!STRINGS[next] || next === lang) return;
    lang = next;
    try {
      window.localStorage.setItem(LANG_KEY, lang);
    } catch (err) {
      // not remembered, still switched
    }
    applyLanguage();
    // The result's texts come from the server in the request's language: ask again.
    if (lastFile && document.body.dataset.state !== "loading" && !resultEl.hidden) upload(lastFile);
    else if (!errorBox.hidden) clearError();
  }

  function formatMB(bytes) {
    const mb = bytes / (1024 * 1024);
    return (mb >= 10 ? mb.toFixed(0) : mb.toFixed(1).replace(/\.0$/, "")) + " MB";
  }

  function formatSize(bytes) {
    return bytes < 1024 * 1024 ? Math.max(1, Math.round(bytes / 1024)) + " KB" : formatMB(bytes);
  }

  function setState(state) {
    document.body.dataset.state = state;
  }

  function showError(title, detail, reasons) {
    resultEl.hidden = true;
    $("error-title").textContent = title;
    $("error-detail").textContent = detail;
    const list = $("error-reasons");
    list.replaceChildren(...(reasons || []).map((r) => el("li", "", r)));
    list.hidden = !(reasons && reasons.length);
    errorBox.hidden = false;
    statusEl.textContent = "";
    setState("error");
  }

  function clearError() {
    errorBox.hidden = true;
    $("error-detail").textContent = "";
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function render(data) {
    $("result-file").textContent = data.image.filename;
    $("pred-index").textContent = String(data.label_index);
    $("pred-label").textContent = data.label_description;
    const d = data.decision;
    const decisionEl = $("decision");
    decisionEl.hidden = !(d && d.threshold != null);
    if (!decisionEl.hidden) {
      const pct = (x) => (100 * x).toFixed(1);
      decisionEl.textContent = t("decision")(pct(d.pneumonia_probability), pct(d.threshold),
        d.target_sensitivity != null ? (100 * d.target_sensitivity).toFixed(0) : "?");
    }
    // Review band: the film is so close to a decision that the model has no reliable answer. The
    // reason comes translated from the server; the advice says what weight the label has (none on
    // pneumonia vs normal; on bacterial vs viral only the kind is undecided), and the label is shown
    // smaller and lighter so that it does not read as the answer.
    const flaggedFilm = Boolean(d && d.review);
    $("review").hidden = !flaggedFilm;
    $("review-reason").textContent = flaggedFilm ? d.review_reason || "" : "";
    const kind = flaggedFilm && d.review_kind === "bacterial_vs_viral" ? "bacterial_vs_viral" : "pneumonia_vs_normal";
    $("review-advice").textContent = flaggedFilm ? t("review_advice_" + kind) : "";
    $("prediction").classList.toggle("flagged", flaggedFilm);

    const bars = $("bars");
    bars.replaceChildren();
    for (const c of data.classes) {
      const pct = 100 * c.probability;
      const li = el("li", c.index === data.label_index ? "top" : "");
      li.dataset.class = c.name;
      const label = el("div", "bar-label");
      label.append(el("span", "", c.index + " · " + c.description), el("span", "bar-pct", pct.toFixed(1) + " %"));
      const track = el("div", "bar-track");
      track.setAttribute("role", "meter");
      track.setAttribute("aria-valuemin", "0");
      track.setAttribute("aria-valuemax", "100");
      track.setAttribute("aria-valuenow", pct.toFixed(1));
      track.setAttribute("aria-label", c.description);
      const fill = el("div", "bar-fill");
      fill.style.width = pct.toFixed(2) + "%";
      track.append(fill);
      li.append(label, track);
      bars.append(li);
    }

    // Input gate: a prominent banner when the image was classified but flagged.
    const gate = data.suitability;
    const flagged = gate && (gate.status === "warn" || gate.status === "refuse");
    $("gate-reasons").replaceChildren(...(flagged ? gate.reasons : []).map((r) => el("li", "", r)));
    $("gate-banner").hidden = !flagged;

    const warnings = data.warnings || [];
    const list = $("warning-list");
    list.replaceChildren(...warnings.map((w) => el("li", "", w)));
    $("warnings").hidden = warnings.length === 0;

    $("preview").src = data.preview_png ? "data:image/png;base64," + data.preview_png : "";
    if (data.heatmap_png) {
      overlay.src = "data:image/png;base64," + data.heatmap_png;
      toggle.disabled = false;
    } else {
      overlay.removeAttribute("src");
      toggle.disabled = true;
    }
    overlay.hidden = !(toggle.checked && data.heatmap_png);

    const im = data.image;
    const parts = [im.format, im.width + " × " + im.height + " px"];
    if (im.photometric_interpretation) parts.push(im.photometric_interpretation);
    if (im.modality) parts.push(im.modality);
    parts.push(formatSize(im.size_bytes));
    $("image-info").textContent = t("read_as") + parts.join(" · ");
    $("model-version").textContent = data.model.name + " " + data.model.version;

    resultEl.hidden = false;
    statusEl.textContent = t("done")(Math.round(data.latency_ms));
    setState("result");
  }

  async function upload(file) {
    clearError();
    if (!file) return;
    if (file.size > maxUploadBytes) {
      showError(t("t413"), t("over_limit")(file.name, formatMB(file.size), formatMB(maxUploadBytes)));
      return;
    }
    lastFile = file;
    resultEl.hidden = true;
    setState("loading");
    statusEl.textContent = t("reading")(file.name);
    const form = new FormData();
    form.append("file", file, file.name);
    let response;
    try {
      response = await fetch("api/v1/predictions?heatmap=true&preview=true", {
        method: "POST",
        body: form,
        headers: { "Accept-Language": lang, "X-DeepHealth-Interface": "page" },
      });
    } catch (err) {
      showError(t("unreachable"), t("unreachable_detail"));
      return;
    }
    let data = null;
    try {
      data = await response.json();
    } catch (err) {
      data = null;
    }
    if (!response.ok) {
      const detail = data && typeof data.detail === "string" ? data.detail : "HTTP " + response.status;
      if (response.status === 422 && data && data.suitability) {
        // Refused by the input gate: the reasons (translated by the server), and no probabilities.
        showError(t("gate_refused"), t("gate_refused_detail")(file.name), data.suitability.reasons);
        return;
      }
      showError(t("t" + response.status) || t("failed"), detail);
      return;
    }
    render(data);
  }

  fileInput.addEventListener("change", () => {
    upload(fileInput.files[0]);
    fileInput.value = "";  // choosing the same file again triggers a new upload
  });

  ["dragenter", "dragover"].forEach((type) =>
    dropzone.addEventListener(type, (event) => {
      event.preventDefault();
      dropzone.classList.add("dragover");
    })
  );
  ["dragleave", "drop"].forEach((type) =>
    dropzone.addEventListener(type, () => dropzone.classList.remove("dragover"))
  );
  dropzone.addEventListener("drop", (event) => {
    event.preventDefault();
    const files = event.dataTransfer && event.dataTransfer.files;
    if (files && files.length) upload(files[0]);
  });
  // Dropping a file outside the zone must not navigate away from the page.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());

  toggle.addEventListener("change", () => {
    overlay.hidden = !(toggle.checked && overlay.getAttribute("src"));
  });

  document.querySelectorAll(".lang-toggle button").forEach((b) =>
    b.addEventListener("click", () => setLanguage(b.dataset.lang))
  );
  applyLanguage();

  fetch("healthz")
    .then((r) => (r.ok ? r.json() : Promise.reject(r.status)))
    .then((h) => {
      maxUploadBytes = h.max_upload_bytes;
      $("limit").textContent = formatMB(h.max_upload_bytes);
      $("model-version").textContent = h.model + " " + h.version;
    })
    .catch(() => {
      $("model-version").textContent = t("unavailable");
    });
})();
