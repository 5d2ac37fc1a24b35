/* Segment page: upload an image as a job (elapsed time, place in the queue, cancel), draw the labels
 * over the photo (opacity, classes shown or hidden from the legend, background left clear), say how
 * clearly each class won, and probe a pixel for class, score, runner-up and the support crop whose
 * prototype won that class (the explain output). */
"use strict";
(() => {
  const { api, el, artifactUrl, loadImage, drawCrop, serverStatus, plural } = protodb;
  const form = document.getElementById("segment-form");
  const vocabSel = document.getElementById("vocab");
  const fileInput = document.getElementById("file");
  const drop = document.getElementById("drop");
  const status = document.getElementById("seg-status");
  const runBtn = document.getElementById("run");
  const section = document.getElementById("result");
  const canvas = document.getElementById("overlay");
  const mark = document.getElementById("probe-mark");
  const probe = document.getElementById("probe");
  const crop = document.getElementById("crop");
  const progress = document.getElementById("progress");
  const progressText = document.getElementById("progress-text");
  const cancelBtn = document.getElementById("cancel");
  const opacity = document.getElementById("opacity");
  const showLabels = document.getElementById("show-labels");
  let dropped = null;
  let result = null;
  let cursor = null;
  let hidden = new Set();  // label values not drawn (the background starts hidden: the photo shows through)
  let shown = { base: null, baseUrl: null, layer: null };
  let current = null;  // the job in progress: {id, url, ...}
  const maskCanvas = document.getElementById("mask");  // the painted pixels, at the labels' resolution
  const teach = { blob: null, painted: 0, stored: null, writes: false };
  const PAINT = "rgb(255, 0, 255)";

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
        v.loaded ? `${v.name} (${plural(v.classes.length, "class", "classes")}, v${v.version})` : v.name)));
      if (!vocabularies.length) status.textContent = "No vocabulary yet: type classes, or create one with protodb vocab create NAME CLASS…";
      vocabSel.dataset.ready = "true";
    } catch (err) {
      status.textContent = `Could not list vocabularies: ${err.message}`;
    }
  }

  const MAX_SIDE = 2048;  // the page sends at most this many pixels a side (per-pixel maps stay small)

  /** The file, or a PNG of it scaled down to MAX_SIDE; the server decodes (and refuses) what it gets.
   *  `decodable`: the browser can draw it (else the server's overlay is shown instead). */
  async function prepare(file) {
    let bitmap = null;
    try { bitmap = await createImageBitmap(file); } catch (_) { return { blob: file, note: "", decodable: false }; }
    const { width: w, height: h } = bitmap;
    const scale = MAX_SIDE / Math.max(w, h);
    if (scale >= 1) { bitmap.close(); return { blob: file, note: "", decodable: true }; }
    const c = document.createElement("canvas");
    c.width = Math.max(1, Math.round(w * scale));
    c.height = Math.max(1, Math.round(h * scale));
    c.getContext("2d").drawImage(bitmap, 0, 0, c.width, c.height);
    bitmap.close();
    const blob = await new Promise((resolve) => c.toBlob(resolve, "image/png"));
    return { blob: blob || file, note: blob ? ` (sent at ${c.width}×${c.height}, scaled from ${w}×${h})` : "", decodable: true };
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

  // ------------------------------------------------------------------ drawing
  const isBackground = (res, value) => res.legend[String(value)] === "background";

  /** The label layer: every shown class in its colour, hidden ones (and the background, at first) clear. */
  function buildLayer() {
    const m = result.maps;
    const layer = document.createElement("canvas");
    layer.width = m.width;
    layer.height = m.height;
    const ctx = layer.getContext("2d");
    const img = ctx.createImageData(m.width, m.height);
    const px = new Uint32Array(img.data.buffer);
    const lut = new Uint32Array(Math.max(...Object.keys(result.legend).map(Number)) + 1);  // RGBA little-endian
    for (const [value, rgb] of Object.entries(result.colours)) {
      if (hidden.has(Number(value))) continue;
      const [r, g, b] = isBackground(result, value) ? [0, 0, 0] : rgb;
      lut[Number(value)] = (255 << 24 | b << 16 | g << 8 | r) >>> 0;
    }
    const labels = m.labelView;
    for (let i = 0; i < px.length; i++) px[i] = lut[labels[i]] || 0;
    ctx.putImageData(img, 0, 0);
    shown.layer = layer;
  }

  function paint() {
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ctx.globalAlpha = 1;
    if (shown.base) ctx.drawImage(shown.base, 0, 0, canvas.width, canvas.height);
    if (showLabels.checked && shown.layer && shown.base !== shown.serverOverlay) {
      ctx.globalAlpha = Number(opacity.value) / 100;
      ctx.drawImage(shown.layer, 0, 0, canvas.width, canvas.height);
      ctx.globalAlpha = 1;
    }
    if (teach.painted) {  // the corrected pixels being painted, over everything
      ctx.globalAlpha = 0.7;
      ctx.drawImage(maskCanvas, 0, 0, canvas.width, canvas.height);
      ctx.globalAlpha = 1;
    }
    canvas.dataset.opacity = opacity.value;
    canvas.dataset.hidden = Array.from(hidden).sort((a, b) => a - b).join(",");
  }
  showLabels.addEventListener("change", paint);
  opacity.addEventListener("input", () => {
    document.getElementById("opacity-value").textContent = `${opacity.value}%`;
    paint();
  });

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

  async function showImage(res, blob, decodable) {
    if (shown.baseUrl) URL.revokeObjectURL(shown.baseUrl);
    let base = null, baseUrl = null, serverOverlay = null;
    if (decodable) {
      baseUrl = URL.createObjectURL(blob);
      try { base = await loadImage(baseUrl); } catch (_) { base = null; }
    }
    if (!base && res.overlay_png) {  // a format this browser cannot draw: the server's overlay instead
      serverOverlay = await loadImage(`data:image/png;base64,${res.overlay_png}`);
      base = serverOverlay;
    }
    shown = { base, baseUrl, layer: null, serverOverlay };
    canvas.width = res.maps.width;
    canvas.height = res.maps.height;
    canvas.dataset.width = String(res.maps.width);
    canvas.dataset.height = String(res.maps.height);
    teach.blob = blob;
    resetMask(res.maps.width, res.maps.height);
    buildLayer();
    paint();
    fitCanvas();
  }

  // ------------------------------------------------------------------ legend and confidence
  function fmtSep(c) {
    return c && c.separation !== null && c.separation !== undefined ? c.separation.toFixed(2) : "–";
  }

  function toggle(value, button) {
    if (hidden.has(value)) hidden.delete(value); else hidden.add(value);
    button.setAttribute("aria-pressed", String(!hidden.has(value)));
    button.closest("li").dataset.shown = String(!hidden.has(value));
    buildLayer();
    paint();
  }

  function showLegend(res) {
    const present = res.present;
    const conf = (res.confidence && res.confidence.classes) || {};
    const items = Object.entries(res.legend)
      .filter(([, name]) => present[name])
      .sort((a, b) => present[b[1]].fraction - present[a[1]].fraction)
      .map(([value, name]) => {
        const c = conf[name];
        const bg = name === "background";
        const sw = el("span", { class: bg ? "swatch clear" : "swatch", "aria-hidden": "true" });
        if (!bg) sw.style.background = `rgb(${res.colours[value].join(",")})`;
        const on = !hidden.has(Number(value));
        const button = el("button", { type: "button", class: "legend-toggle", "aria-pressed": String(on),
          title: `${on ? "Hide" : "Show"} ${name} on the image`, dataset: { value } },
          sw, el("span", { class: "name" }, name),
          c && c.uncertain ? el("span", { class: "badge uncertain", title: `most of its pixels only just beat ${c.runner_up}` }, "uncertain") : null,
          el("span", { class: "frac" }, `${(100 * present[name].fraction).toFixed(1)}%`));
        button.addEventListener("click", () => toggle(Number(value), button));
        const detail = el("span", { class: "conf muted" },
          `score ${present[name].score.toFixed(3)} · separation ${fmtSep(c)}`,
          c ? ` · ${(100 * c.near_tie).toFixed(0)}% near ties · runner-up ${c.runner_up}` : "");
        return el("li", { dataset: { label: name, value, fraction: present[name].fraction, score: present[name].score,
          separation: c ? c.separation : "", uncertain: c ? String(c.uncertain) : "", shown: String(on) } },
          button, detail);
      });
    const legend = document.getElementById("legend");
    legend.replaceChildren(...items);
    legend.dataset.ready = "true";
  }

  function showConfidence(res) {
    const box = document.getElementById("fit-warning");
    const conf = res.confidence || { warnings: [] };
    box.dataset.verdict = conf.verdict || "";
    if (!conf.warnings.length) {
      box.hidden = true;
      box.replaceChildren();
      return;
    }
    box.replaceChildren(
      el("strong", {}, conf.verdict === "doubtful" ? "These labels may not describe the photo." : "Some labels are uncertain."),
      el("ul", {}, conf.warnings.map((w) => el("li", { dataset: { code: w.code, level: w.level } }, w.message))),
      el("span", {}, "Scores are cosine similarities, not probabilities: see “How to read these numbers”."));
    box.hidden = false;
  }

  // ------------------------------------------------------------------ probe
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
    let runner = "–", sep = "–";
    if (m.runnerView) {
      const rv = m.runnerView[i];
      const rs = m.runnerScoreView.getInt16(2 * i, true) / m.scores_scale;
      const d1 = Math.max(0, 1 - score), d2 = Math.max(0, 1 - rs);
      const s = d2 > 0 ? Math.max(0, Math.min(1, 1 - d1 / d2)) : 0;
      runner = `${result.legend[String(rv)] || "?"} ${rs.toFixed(4)}`;
      sep = `${s.toFixed(3)}${s < result.confidence.rule.near_tie ? " (near tie)" : ""}`;
    }
    document.getElementById("probe-runner").textContent = runner;
    document.getElementById("probe-separation").textContent = sep;
    document.getElementById("probe-pixel").textContent = `${x}, ${y}`;
    Object.assign(probe.dataset, { class: name, score: score.toFixed(4), x, y, runner, separation: sep });
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
    const taught = w.support_source === "correction" ? " (from a correction)" : "";
    caption.textContent = `${name}: ${w.kind} prototype of ${w.set_ref}${taught}, score ${w.score.toFixed(3)}`;
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
  canvas.addEventListener("mousemove", (ev) => { if (tool() === "probe") probeAt(...toImage(ev)); });
  canvas.addEventListener("click", (ev) => { if (tool() === "probe") probeAt(...toImage(ev)); });
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

  // ------------------------------------------------------------------ the job
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const secs = (s) => (s < 60 ? `${s.toFixed(1)} s` : `${Math.floor(s / 60)} min ${Math.floor(s % 60)} s`);

  function describe(job, local) {
    const elapsed = secs(job.elapsed + local);
    if (job.state === "queued") {
      const ahead = job.ahead === null ? "" : job.ahead === 0 ? "next in line" : `${plural(job.ahead, "job")} ahead of yours`;
      return `Queued: ${ahead} (${plural(job.queue.running, "worker")} busy of ${job.queue.workers}) · ${elapsed}`;
    }
    if (job.state === "running") {
      const typical = job.typical_seconds ? ` · usually about ${secs(job.typical_seconds)}` : "";
      return `Segmenting: ${elapsed}${typical}`;
    }
    if (job.state === "cancelling") return `Cancelling: the worker finishes the image in hand, then drops it · ${elapsed}`;
    return `${job.state} · ${elapsed}`;
  }

  /** Follow a job until it is finished: the line below the form ticks every 100 ms between polls. */
  async function follow(job) {
    let seen = performance.now();
    let last = job;
    const tick = setInterval(() => {
      progressText.textContent = describe(last, last.state === "queued" || last.state === "running" || last.state === "cancelling"
        ? (performance.now() - seen) / 1000 : 0);
      progress.dataset.state = last.state;
      progress.dataset.position = last.position === null ? "" : String(last.position);
    }, 100);
    try {
      let wait = 250;
      while (!["done", "failed", "cancelled"].includes(last.state)) {
        await sleep(wait);
        wait = Math.min(1000, wait * 1.5);
        last = await api(job.url);
        seen = performance.now();
        if (current) current.job = last;
      }
      progress.dataset.state = last.state;
      return last;
    } finally {
      clearInterval(tick);
    }
  }

  cancelBtn.addEventListener("click", async () => {
    if (!current || !current.job) return;
    cancelBtn.disabled = true;
    try {
      const job = await api(current.job.url, { method: "DELETE" });
      current.job = job;
      progressText.textContent = describe(job, 0);
    } catch (err) {
      progressText.textContent = `Could not cancel: ${err.message}`;
    }
  });

  function clearResult() {
    section.hidden = true;
    result = null;
    cursor = null;
    mark.hidden = true;
    document.getElementById("legend").replaceChildren();
    document.getElementById("legend").dataset.ready = "false";
    document.getElementById("fit-warning").hidden = true;
    canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
  }

  function failed(message) {
    clearResult();
    status.textContent = message;
    status.classList.add("error");
    form.dataset.failed = String(Number(form.dataset.failed || 0) + 1);
  }

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const file = chosenFile();
    if (!file) { status.textContent = "Choose an image first."; fileInput.focus(); return; }
    runBtn.disabled = true;
    const { blob, note, decodable } = await prepare(file);
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
    body.append("outputs", decodable ? "maps,runner_up,explain" : "overlay,maps,runner_up,explain");
    status.classList.remove("error");
    status.textContent = `Segmenting ${file.name} with ${classes || vocabSel.value}…`;
    section.classList.add("stale");  // the previous result stays visible, dimmed, until this one is in
    const t0 = performance.now();
    current = { job: null };
    try {
      const job = await api("/api/jobs/segment", { method: "POST", body });
      current.job = job;
      progress.hidden = false;
      cancelBtn.disabled = false;
      cancelBtn.focus();
      const end = await follow(job);
      if (end.state === "cancelled") {
        status.textContent = `Cancelled ${file.name}${result ? "; the result shown is the previous one" : ""}.`;
        form.dataset.cancelled = String(Number(form.dataset.cancelled || 0) + 1);
        return;
      }
      if (end.state === "failed") { failed(end.error); return; }
      const res = await api(end.result_url);
      api(end.url, { method: "DELETE" }).catch(() => {});  // the result is in: let the server forget it
      const m = res.maps;
      const raw = b64bytes(m.labels);
      m.labelView = m.labels_dtype === "uint8" ? raw : new Uint16Array(raw.buffer);
      m.scoreView = new DataView(b64bytes(m.scores).buffer);
      if (m.runner_up_labels) {
        const rr = b64bytes(m.runner_up_labels);
        m.runnerView = m.labels_dtype === "uint8" ? rr : new Uint16Array(rr.buffer);
        m.runnerScoreView = new DataView(b64bytes(m.runner_up_scores).buffer);
      }
      result = res;
      cursor = null;
      crop.dataset.class = "";
      hidden = new Set(Object.keys(res.legend).filter((v) => isBackground(res, v)).map(Number));
      section.hidden = false;
      await showImage(res, blob, decodable);
      showLegend(res);
      showConfidence(res);
      if (teach.writes) { offerClasses(res); teachSection.hidden = false; }
      document.getElementById("timing").textContent =
        `${res.input}: ${res.vocabulary.name} v${res.vocabulary.version} (generation ${res.generation}) · segmented in ${res.seconds.toFixed(2)} s, ${((performance.now() - t0) / 1000).toFixed(2)} s in all`;
      const n = Object.keys(res.present).length;
      const verdict = { doubtful: " (doubtful: see the warning)", mixed: " (some uncertain: see the note)" }[res.confidence.verdict] || "";
      status.textContent = `${res.input}${note}: ${plural(n, "class", "classes")} present${verdict}.`;
      form.dataset.done = String(Number(form.dataset.done || 0) + 1);
    } catch (err) {
      failed(err.retryAfter ? `${err.message} (retry in ${err.retryAfter} s)` : err.message);
    } finally {
      section.classList.remove("stale");
      progress.hidden = true;
      current = null;
      runBtn.disabled = false;
    }
  });


  // ------------------------------------------------------------------ teach by example (writes on)
  const teachSection = document.getElementById("teach");
  const teachStatus = document.getElementById("teach-status");
  const classInput = document.getElementById("teach-class");
  const addBtn = document.getElementById("add-correction");
  const rebuildBtn = document.getElementById("rebuild");
  const brushSize = document.getElementById("brush-size");
  const tool = () => (document.querySelector('input[name="tool"]:checked') || { value: "probe" }).value;

  function resetMask(w, h) {
    maskCanvas.width = w;
    maskCanvas.height = h;
    maskCanvas.getContext("2d").clearRect(0, 0, w, h);
    teach.painted = 0;
    updatePainted();
  }

  /** Painted pixels (alpha > 0) as a Uint8Array of 0/1, and their count. */
  function paintedPixels() {
    const d = maskCanvas.getContext("2d").getImageData(0, 0, maskCanvas.width, maskCanvas.height).data;
    const out = new Uint8Array(maskCanvas.width * maskCanvas.height);
    let n = 0;
    for (let i = 0; i < out.length; i++) if (d[4 * i + 3]) { out[i] = 1; n++; }
    return { mask: out, count: n };
  }

  function updatePainted() {
    teach.painted = maskCanvas.width ? paintedPixels().count : 0;
    canvas.dataset.painted = String(teach.painted);
    addBtn.disabled = !teach.painted;
  }

  /** Square stamps every pixel along the stroke: crisp pixels (no antialiasing), so what is shown is what is sent. */
  function stamp(from, to) {
    const ctx = maskCanvas.getContext("2d");
    const r = Number(brushSize.value) / 2;
    ctx.globalCompositeOperation = tool() === "eraser" ? "destination-out" : "source-over";
    ctx.fillStyle = PAINT;
    const steps = Math.max(1, Math.ceil(Math.hypot(to[0] - from[0], to[1] - from[1])));
    for (let s = 0; s <= steps; s++) {
      const x = from[0] + ((to[0] - from[0]) * s) / steps, y = from[1] + ((to[1] - from[1]) * s) / steps;
      ctx.fillRect(Math.round(x - r), Math.round(y - r), Math.max(1, Math.round(2 * r)), Math.max(1, Math.round(2 * r)));
    }
    ctx.globalCompositeOperation = "source-over";
  }

  let stroke = null;
  canvas.addEventListener("pointerdown", (ev) => {
    if (!result || tool() === "probe" || !teach.writes) return;
    ev.preventDefault();
    canvas.setPointerCapture(ev.pointerId);
    const p = toImage(ev);
    stroke = p;
    stamp(p, p);
    teach.painted = 1;
    paint();
  });
  canvas.addEventListener("pointermove", (ev) => {
    if (!stroke) return;
    const p = toImage(ev);
    stamp(stroke, p);
    stroke = p;
    paint();
  });
  const endStroke = () => { if (stroke) { stroke = null; updatePainted(); paint(); } };
  canvas.addEventListener("pointerup", endStroke);
  canvas.addEventListener("pointercancel", endStroke);
  for (const r of document.querySelectorAll('input[name="tool"]')) {
    r.addEventListener("change", () => canvas.classList.toggle("painting", tool() !== "probe"));
  }
  brushSize.addEventListener("input", () => { document.getElementById("brush-size-value").textContent = `${brushSize.value} px`; });
  document.getElementById("clear-mask").addEventListener("click", () => { resetMask(maskCanvas.width, maskCanvas.height); paint(); });

  function offerClasses(res) {
    const names = res.vocabulary.classes || [];
    document.getElementById("teach-classes").replaceChildren(...names.map((n) => el("option", { value: n })));
    if (!classInput.value || !names.includes(classInput.value)) classInput.value = names[0] || "";
  }

  /** The ref of the set that labelled class `name` in this result (its provenance), if any. */
  function setRefOf(res, name) {
    for (const refs of Object.values(res.vocabulary.sets || {})) {
      for (const ref of refs) if (ref.slice(0, ref.lastIndexOf("@")) === name) return ref;
    }
    return null;
  }

  const auth = () => ({ Authorization: `Bearer ${document.getElementById("teach-token").value}` });

  addBtn.addEventListener("click", async () => {
    const name = classInput.value.trim();
    if (!name) { teachStatus.textContent = "Choose the class the painted pixels show."; classInput.focus(); return; }
    addBtn.disabled = true;
    teachStatus.classList.remove("error");
    try {
      const maskBlob = await new Promise((resolve) => maskCanvas.toBlob(resolve, "image/png"));
      const body = new FormData();
      body.append("image", teach.blob, result.input);
      body.append("mask", maskBlob, "mask.png");
      body.append("class", name);
      const author = document.getElementById("teach-author").value.trim();
      if (author) body.append("author", author);
      const ref = setRefOf(result, name);
      if (ref) body.append("set", ref);
      body.append("settings", JSON.stringify({ vocabulary: result.vocabulary.name, settings: result.settings }));
      const res = await api("/api/corrections", { method: "POST", body, headers: auth() });
      const c = res.corrections[0];
      const snapshot = document.createElement("canvas");  // the corrected pixels, shown over both versions
      snapshot.width = maskCanvas.width;
      snapshot.height = maskCanvas.height;
      snapshot.getContext("2d").drawImage(maskCanvas, 0, 0);
      teach.stored = { name, mask: paintedPixels().mask, width: maskCanvas.width, height: maskCanvas.height,
                       classes: result.vocabulary.classes.slice(), background: result.settings.background, snapshot };
      teachStatus.textContent = `Stored correction ${c.id.slice(0, 12)}: ${plural(c.pixels, "pixel")} of ${c.class}. Rebuild ${c.class} to learn from it.`;
      teachSection.dataset.corrections = String(Number(teachSection.dataset.corrections || 0) + 1);
      teachSection.dataset.lastCorrection = c.id;
      rebuildBtn.disabled = false;
    } catch (err) {
      teachStatus.textContent = err.message;
      teachStatus.classList.add("error");
      teachSection.dataset.failed = String(Number(teachSection.dataset.failed || 0) + 1);
    } finally {
      addBtn.disabled = !teach.painted;
    }
  });

  /** Segment the photo with `ref` in place of the taught class; IoU of that class against the painted pixels. */
  async function versionView(ref, target, caption) {
    const st = teach.stored;
    const classes = st.classes.map((n) => (n === st.name ? ref : n));
    if (!classes.includes(ref)) classes.push(ref);
    const q = new URLSearchParams({ classes: classes.join(","), outputs: "overlay,maps", background: String(st.background) });
    const res = await api(`/api/segment?${q}`, { method: "POST", body: teach.blob });
    const img = await loadImage(`data:image/png;base64,${res.overlay_png}`);
    target.width = res.maps.width;
    target.height = res.maps.height;
    const tctx = target.getContext("2d");
    tctx.drawImage(img, 0, 0);
    tctx.globalAlpha = 0.35;
    tctx.drawImage(st.snapshot, 0, 0, target.width, target.height);
    tctx.globalAlpha = 1;
    const raw = b64bytes(res.maps.labels);
    const labels = res.maps.labels_dtype === "uint8" ? raw : new Uint16Array(raw.buffer);
    const value = Number(Object.keys(res.legend).find((v) => res.legend[v] === st.name));
    let inter = 0, union = 0, gt = 0;
    for (let i = 0; i < st.mask.length; i++) {
      const p = labels[i] === value, g = st.mask[i] === 1;
      if (p && g) inter++;
      if (p || g) union++;
      if (g) gt++;
    }
    const iou = union ? inter / union : 0;
    caption.textContent = `${ref}: IoU ${iou.toFixed(3)} on the corrected pixels · ${(100 * (gt ? inter / gt : 0)).toFixed(1)}% of them labelled ${st.name}`;
    target.closest("figure").dataset.iou = iou.toFixed(4);
    target.closest("figure").dataset.ref = ref;
    return iou;
  }

  rebuildBtn.addEventListener("click", async () => {
    const st = teach.stored;
    if (!st) return;
    rebuildBtn.disabled = true;
    teachStatus.classList.remove("error");
    teachStatus.textContent = `Rebuilding ${st.name}…`;
    try {
      const job = await api(`/api/classes/${encodeURIComponent(st.name)}/rebuild`, { method: "POST", headers: auth() });
      let last = job;
      while (!["done", "failed", "cancelled"].includes(last.state)) {
        await sleep(300);
        last = await api(job.url);
        const p = last.progress;
        teachStatus.textContent = `Rebuilding ${st.name}: ${last.state}` +
          (p ? ` · ${p.note} ${p.total ? `${Math.round(p.done)}/${p.total}` : ""}` : "") + ` · ${secs(last.elapsed)}`;
        teachSection.dataset.progress = p ? p.note : "";
      }
      if (last.state !== "done") throw new Error(last.error || `the rebuild was ${last.state}`);
      const built = await api(last.result_url);
      teachStatus.textContent = built.reused
        ? `${built.ref} already holds these corrections.`
        : `Built ${built.ref} from ${built.previous}'s support plus the corrections; ${built.previous} stays.`;
      document.getElementById("before-after").hidden = false;
      await versionView(built.previous, document.getElementById("before"), document.getElementById("before-caption"));
      await versionView(built.ref, document.getElementById("after"), document.getElementById("after-caption"));
      teachSection.dataset.rebuilt = built.ref;
    } catch (err) {
      teachStatus.textContent = err.message;
      teachStatus.classList.add("error");
    } finally {
      rebuildBtn.disabled = false;
    }
  });

  (async () => {
    const health = await serverStatus();
    teach.writes = Boolean(health && health.writes);
    teachSection.dataset.writes = String(teach.writes);
  })();

  loadVocabularies();
})();
