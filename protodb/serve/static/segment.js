/* Segment page: upload an image, show the overlay, probe a pixel for class, score and the
 * support crop whose prototype won that class (the explain output). */
"use strict";
(() => {
  const { api, el, artifactUrl, loadImage, drawCrop, serverStatus } = protodb;
  const form = document.getElementById("segment-form");
  const vocabSel = document.getElementById("vocab");
  const fileInput = document.getElementById("file");
  const drop = document.getElementById("drop");
  const status = document.getElementById("seg-status");
  const runBtn = document.getElementById("run");
  const canvas = document.getElementById("overlay");
  const mark = document.getElementById("probe-mark");
  const probe = document.getElementById("probe");
  const crop = document.getElementById("crop");
  let dropped = null;
  let result = null;
  let cursor = null;

  function b64bytes(b64) {
    const bin = atob(b64);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }

  async function loadVocabularies() {
    try {
      const { vocabularies } = await api("/api/vocabularies");
      vocabSel.replaceChildren(...vocabularies.map((v) => el("option", { value: v.name },
        v.loaded ? `${v.name} (${v.classes.length} classes, v${v.version})` : v.name)));
      if (!vocabularies.length) status.textContent = "No vocabulary yet: type classes, or create one with protodb vocab create NAME CLASS…";
      vocabSel.dataset.ready = "true";
    } catch (err) {
      status.textContent = `Could not list vocabularies: ${err.message}`;
    }
  }

  const MAX_SIDE = 2048;  // the page sends at most this many pixels a side (per-pixel maps stay small)

  /** The file, or a PNG of it scaled down to MAX_SIDE; the server decodes (and refuses) what it gets. */
  async function prepare(file) {
    let bitmap = null;
    try { bitmap = await createImageBitmap(file); } catch (_) { return { blob: file, note: "" }; }
    const { width: w, height: h } = bitmap;
    const scale = MAX_SIDE / Math.max(w, h);
    if (scale >= 1) { bitmap.close(); return { blob: file, note: "" }; }
    const c = document.createElement("canvas");
    c.width = Math.max(1, Math.round(w * scale));
    c.height = Math.max(1, Math.round(h * scale));
    c.getContext("2d").drawImage(bitmap, 0, 0, c.width, c.height);
    bitmap.close();
    const blob = await new Promise((resolve) => c.toBlob(resolve, "image/png"));
    return { blob: blob || file, note: blob ? ` (sent at ${c.width}×${c.height}, scaled from ${w}×${h})` : "" };
  }

  function chosenFile() {
    return dropped || (fileInput.files && fileInput.files[0]) || null;
  }

  fileInput.addEventListener("change", () => {
    dropped = null;
    const f = chosenFile();
    document.getElementById("file-name").textContent = f ? `${f.name} (${Math.round(f.size / 1024)} KiB)` : "or drop one here";
  });
  for (const ev of ["dragenter", "dragover"]) drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.add("over"); });
  for (const ev of ["dragleave", "drop"]) drop.addEventListener(ev, () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    const f = e.dataTransfer.files && e.dataTransfer.files[0];
    if (f) {
      dropped = f;
      document.getElementById("file-name").textContent = `${f.name} (${Math.round(f.size / 1024)} KiB)`;
    }
  });

  function showLegend(res) {
    const present = res.present;
    const items = Object.entries(res.legend)
      .filter(([, name]) => present[name])
      .sort((a, b) => present[b[1]].fraction - present[a[1]].fraction)
      .map(([value, name]) => {
        const sw = el("span", { class: "swatch", "aria-hidden": "true" });
        sw.style.background = `rgb(${res.colours[value].join(",")})`;
        return el("li", { dataset: { label: name, value, fraction: present[name].fraction, score: present[name].score } },
          sw, el("span", { class: "name" }, name),
          el("span", { class: "frac" }, `${(100 * present[name].fraction).toFixed(1)}% · ${present[name].score.toFixed(3)}`));
      });
    const legend = document.getElementById("legend");
    legend.replaceChildren(...items);
    legend.dataset.ready = "true";
  }

  let shown = { overlay: null, original: null };

  /** Display size: as large as the column allows and fits a 768-pixel-high window, aspect kept. */
  function fitCanvas() {
    if (!canvas.width) return;
    const wrap = document.getElementById("canvas-wrap");
    const maxW = wrap.clientWidth - 12, maxH = Math.max(240, window.innerHeight - 300);
    const scale = Math.min(maxW / canvas.width, maxH / canvas.height);
    canvas.style.width = `${Math.floor(canvas.width * scale)}px`;
    canvas.style.height = `${Math.floor(canvas.height * scale)}px`;
    canvas.style.imageRendering = scale > 2 ? "pixelated" : "auto";
    if (cursor) probeAt(cursor.x, cursor.y);
  }
  window.addEventListener("resize", fitCanvas);

  function paint() {
    const img = document.getElementById("show-labels").checked ? shown.overlay : shown.original || shown.overlay;
    canvas.getContext("2d").drawImage(img, 0, 0, canvas.width, canvas.height);
  }
  document.getElementById("show-labels").addEventListener("change", paint);

  async function showOverlay(res, file) {
    const img = await loadImage(`data:image/png;base64,${res.overlay_png}`);
    if (shown.originalUrl) URL.revokeObjectURL(shown.originalUrl);
    const originalUrl = URL.createObjectURL(file);
    let original = null;
    try { original = await loadImage(originalUrl); } catch (_) { original = null; }
    shown = { overlay: img, original, originalUrl };
    canvas.width = img.naturalWidth;
    canvas.height = img.naturalHeight;
    canvas.dataset.width = String(img.naturalWidth);
    canvas.dataset.height = String(img.naturalHeight);
    paint();
    fitCanvas();
  }

  function probeAt(x, y) {
    if (!result) return;
    const m = result.maps;
    x = Math.max(0, Math.min(m.width - 1, Math.round(x)));
    y = Math.max(0, Math.min(m.height - 1, Math.round(y)));
    cursor = { x, y };
    const i = y * m.width + x;
    const value = m.labelView[i];  // uint16 maps: little-endian, as every browser's platform
    const score = m.scoreView.getInt16(2 * i, true) / m.scores_scale;
    const name = result.legend[String(value)] || "?";
    document.getElementById("probe-class").textContent = name;
    document.getElementById("probe-score").textContent = score.toFixed(4);
    document.getElementById("probe-pixel").textContent = `${x}, ${y}`;
    Object.assign(probe.dataset, { class: name, score: score.toFixed(4), x, y });
    const rect = canvas.getBoundingClientRect();
    const wrap = document.getElementById("canvas-wrap").getBoundingClientRect();
    mark.hidden = false;
    mark.style.left = `${rect.left - wrap.left + ((x + 0.5) * rect.width) / m.width}px`;
    mark.style.top = `${rect.top - wrap.top + ((y + 0.5) * rect.height) / m.height}px`;
    showWinner(name);
  }

  async function showWinner(name) {
    const w = (result.explain || {})[name];
    const caption = document.getElementById("crop-caption");
    const ctx = crop.getContext("2d");
    if (crop.dataset.class === name) return;
    crop.dataset.class = name;
    ctx.clearRect(0, 0, crop.width, crop.height);
    if (!w || !w.support_sha256 || !w.box) {
      caption.textContent = w ? `${name}: won by a ${w.kind || "class"} prototype (no support patch to show)` : "";
      return;
    }
    caption.textContent = `${name}: ${w.kind} prototype of ${w.set_ref}, score ${w.score.toFixed(3)}`;
    try {
      const img = await loadImage(artifactUrl(w.support_sha256));
      if (crop.dataset.class === name) drawCrop(crop, img, w.box);
    } catch (err) {
      caption.textContent = err.message;
    }
  }

  function toImage(ev) {
    const rect = canvas.getBoundingClientRect();
    return [((ev.clientX - rect.left) * canvas.width) / rect.width, ((ev.clientY - rect.top) * canvas.height) / rect.height];
  }
  canvas.addEventListener("mousemove", (ev) => probeAt(...toImage(ev)));
  canvas.addEventListener("click", (ev) => probeAt(...toImage(ev)));
  canvas.addEventListener("keydown", (ev) => {
    if (!result) return;
    const step = Math.max(1, Math.round((ev.shiftKey ? 0.1 : 0.02) * result.maps.width));
    const d = { ArrowLeft: [-step, 0], ArrowRight: [step, 0], ArrowUp: [0, -step], ArrowDown: [0, step] }[ev.key];
    if (!d) return;
    ev.preventDefault();
    const c = cursor || { x: result.maps.width / 2, y: result.maps.height / 2 };
    probeAt(c.x + d[0], c.y + d[1]);
  });
  canvas.addEventListener("focus", () => { if (result && !cursor) probeAt(result.maps.width / 2, result.maps.height / 2); });

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const file = chosenFile();
    if (!file) { status.textContent = "Choose an image first."; fileInput.focus(); return; }
    runBtn.disabled = true;
    const { blob, note } = await prepare(file);
    const body = new FormData();
    body.append("image", blob, file.name);
    const classes = document.getElementById("classes").value.trim();
    if (classes) body.append("classes", classes);
    else body.append("vocab", vocabSel.value);
    const levels = Array.from(document.querySelectorAll('input[name="level"]:checked')).map((c) => c.value);
    if (levels.length && levels.length < 3) body.append("levels", levels.join(","));
    if (document.getElementById("pamr").checked) body.append("pamr", "true");
    const bg = document.getElementById("background").value;
    if (bg) body.append("background", bg);
    body.append("outputs", "overlay,maps,explain");
    status.classList.remove("error");
    status.textContent = `Segmenting ${file.name} with ${classes || vocabSel.value}…`;
    const t0 = performance.now();
    try {
      const res = await api("/api/segment", { method: "POST", body });
      const m = res.maps;
      const raw = b64bytes(m.labels);
      m.labelView = m.labels_dtype === "uint8" ? raw : new Uint16Array(raw.buffer);
      m.scoreView = new DataView(b64bytes(m.scores).buffer);
      result = res;
      cursor = null;
      crop.dataset.class = "";
      document.getElementById("result").hidden = false;
      await showOverlay(res, blob);
      showLegend(res);
      document.getElementById("timing").textContent =
        `${res.vocabulary.name} v${res.vocabulary.version} (generation ${res.generation}) · segmented in ${res.seconds.toFixed(2)} s, ${((performance.now() - t0) / 1000).toFixed(2)} s round trip`;
      status.textContent = `${res.input}${note}: ${Object.keys(res.present).length} classes present.`;
      form.dataset.done = String(Number(form.dataset.done || 0) + 1);
    } catch (err) {
      status.textContent = err.retryAfter ? `${err.message} (retry in ${err.retryAfter} s)` : err.message;
      status.classList.add("error");
    } finally {
      runBtn.disabled = false;
    }
  });

  serverStatus();
  loadVocabularies();
})();
