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

  const TITLES = {
    413: "File too large",
    415: "Unsupported file format",
    422: "This image cannot be used",
  };

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
    $("image-info").textContent = "Read as " + parts.join(" · ");
    $("model-version").textContent = data.model.name + " " + data.model.version;

    resultEl.hidden = false;
    statusEl.textContent = "Done in " + Math.round(data.latency_ms) + " ms.";
    setState("result");
  }

  async function upload(file) {
    clearError();
    if (!file) return;
    if (file.size > maxUploadBytes) {
      showError(TITLES[413], file.name + ": " + formatMB(file.size) + " is over the limit of " + formatMB(maxUploadBytes) + ".");
      return;
    }
    resultEl.hidden = true;
    setState("loading");
    statusEl.textContent = "Reading " + file.name + "…";
    const form = new FormData();
    form.append("file", file, file.name);
    let response;
    try {
      response = await fetch("api/v1/predictions?heatmap=true&preview=true", { method: "POST", body: form });
    } catch (err) {
      showError("Could not reach the server", "The upload did not complete. Check the connection and try again.");
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
        // Refused by the input gate: the reasons, and no probabilities.
        showError("Not classified: this image does not look like a frontal chest X-ray the model can read",
                  file.name + " was not analysed. Reasons:", data.suitability.reasons);
        return;
      }
      showError(TITLES[response.status] || "Request failed", detail);
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

  fetch("healthz")
    .then((r) => (r.ok ? r.json() : Promise.reject(r.status)))
    .then((h) => {
      maxUploadBytes = h.max_upload_bytes;
      $("limit").textContent = formatMB(h.max_upload_bytes);
      $("model-version").textContent = h.model + " " + h.version;
    })
    .catch(() => {
      $("model-version").textContent = "unavailable (server not ready)";
    });
})();
