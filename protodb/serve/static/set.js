/* One prototype set: provenance, its prototypes (parts, instances, background) traced to their nearest
 * support patches (zoomable, so patch boxes can be seen), and its support images with their
 * foreground/background masks and attention drawn over them (opacity, layers, zoom). */
"use strict";
(() => {
  const { api, el, artifactUrl, loadImage, drawCrop, fmtBytes, fmtDate, serverStatus, plural, maskLayer } = protodb;
  const key = decodeURIComponent(location.pathname.replace(/^\/sets\//, ""));
  const status = document.getElementById("set-status");
  const partsStatus = document.getElementById("parts-status");
  const partsList = document.getElementById("parts");
  const supports = document.getElementById("supports");
  const supportsView = document.getElementById("supports-view");
  const nearestBox = document.getElementById("nearest");
  const zoom = document.getElementById("zoom");
  let trace = null;
  const NOUN = { parts: "part", instances: "instance", background: "background" };
  const SUPPORT_WIDTH = 320;  // CSS pixels of a support image at zoom 1

  function row(dl, term, value) {
    if (value === null || value === undefined || value === "") return;
    dl.append(el("dt", {}, term), el("dd", {}, value));
  }

  function fmtValue(v) {
    if (v === null || v === undefined) return "none";
    if (typeof v === "boolean") return v ? "yes" : "no";
    if (Array.isArray(v)) return v.map(fmtValue).join(", ");
    if (typeof v === "object") return Object.entries(v).map(([k, x]) => `${k.replace(/_/g, " ")} ${fmtValue(x)}`).join(", ");
    return String(v);
  }

  /** Mask settings as a small table per method (a readable list, not JSON). */
  function masksTable(masks, made) {
    const methods = Object.entries(masks || {});
    if (!methods.length) return null;
    return el("div", { class: "masks" },
      methods.map(([method, params]) => el("table", { class: "kv", dataset: { method } },
        el("caption", {}, method === "given" ? "given masks (from the exemplars' label maps)" : method),
        el("tbody", {}, Object.entries(params).map(([k, v]) => el("tr", {},
          el("th", { scope: "row" }, k.replace(/_/g, " ")), el("td", {}, fmtValue(v))))))),
      made ? el("p", { class: "muted" }, made) : null);
  }

  function gridName(ext) {
    return ext ? `${ext.name}${ext.patch_size ? ` (${ext.patch_size}-pixel patches)` : ""}` : "";
  }

  function showProvenance(data) {
    const p = data.provenance, s = data.set;
    document.title = `protodb · ${data.ref}`;
    const title = document.getElementById("set-title");
    title.textContent = `${s.class} · version ${s.version} · ${s.extractor}`;
    title.dataset.setId = s.id;
    title.dataset.class = s.class;
    const dl = document.getElementById("prov");
    dl.replaceChildren();
    row(dl, "class", el("span", {}, s.class, " ", el("span", { class: `badge kind-${s.kind}`, id: "set-kind" }, s.kind)));
    row(dl, "set", s.id);
    row(dl, "created", fmtDate(p.created_at));
    row(dl, "extractor", `${p.extractor.name} (${p.extractor.kind}, ${p.extractor.dim}-d, weights ${String(p.extractor.weights_hash || "").slice(0, 12)})`);
    const c = p.counts;
    row(dl, "prototypes", `${c.class} class, ${c.instance} instance, ${c.part} part · background ${c.bg_class}/${c.bg_instance}/${c.bg_part}`);
    const ex = p.images.filter((i) => i.source === "exemplar").length;
    row(dl, "support images", `${plural(p.images.length, "image")} (${plural(ex, "exemplar")})` + (p.seeds.length ? `, seeds ${p.seeds.slice(0, 8).join(", ")}` : ""));
    if (p.generator) row(dl, "generator", `${p.generator.model_id} @ ${p.generator.revision || "?"}, ${plural(p.generator.steps, "step")}, guidance ${p.generator.guidance}; prompt “${p.generator.prompt}”`);
    row(dl, "masks", masksTable(p.masks, data.mask_extractor ? `made on the patch grid of ${gridName(data.mask_extractor)}` : ""));
    row(dl, "label history", p.label.history.map((h) => `${h.source} → ${h.kind}`).join("; "));
    row(dl, "config", `${String(p.config_hash).slice(0, 16)}${p.config ? ` · k=${p.config.k} seed=${p.config.seed}` : ""}`);
    if (p.params && p.params.preset) row(dl, "preset", `${p.params.preset} (stand-in models: not meaningful)`);
    row(dl, "bytes", `vectors ${fmtBytes(p.bytes.vectors)} · images ${fmtBytes(p.bytes.images)} · masks ${fmtBytes(p.bytes.masks)}`);
    row(dl, "tags", (p.tags || []).join(", "));
    document.getElementById("prov-json").textContent = JSON.stringify(p, null, 1);
    document.getElementById("relabel-kind").value = s.kind === "thing" ? "stuff" : "thing";
  }

  // ------------------------------------------------------------------ prototypes and their patches
  function applyZoom() {
    const z = Number(zoom.value);
    document.getElementById("zoom-value").textContent = `${z}×`;
    supports.style.setProperty("--support-width", `${SUPPORT_WIDTH * z}px`);
    supports.dataset.zoom = String(z);
    supports.classList.toggle("crisp", z >= 2);
    scrollToNearest();
  }
  zoom.addEventListener("input", applyZoom);

  /** Bring the nearest patch (the yellow box) into the zoomed view, scrolling only the view itself. */
  function scrollToNearest() {
    const box = supports.querySelector('.hl[data-rank="0"]');
    if (!box || Number(zoom.value) <= 1) return;
    const v = supportsView.getBoundingClientRect(), b = box.getBoundingClientRect();
    supportsView.scrollLeft += b.left - v.left - (v.width - b.width) / 2;
    supportsView.scrollTop += b.top - v.top - (v.height - b.height) / 2;
  }

  function showSupports(images) {
    supports.replaceChildren(...images.map((im) => el("figure", { class: "support", dataset: { imageId: im.id } },
      el("div", { class: "frame" },
        el("img", { src: artifactUrl(im.sha256), alt: `support image ${im.id.slice(0, 8)} (${im.source})`, width: im.size[0], height: im.size[1] }),
        el("div", { class: "boxes" })),
      el("figcaption", {}, `${im.source} · ${im.size[0]}×${im.size[1]}`))));
    applyZoom();
  }

  function highlight(index) {
    const proto = trace.prototypes[index];
    partsList.querySelectorAll(".part").forEach((b) => b.setAttribute("aria-pressed", String(Number(b.dataset.partIndex) === index)));
    supports.querySelectorAll(".support").forEach((fig) => {
      fig.querySelector(".boxes").replaceChildren();
      fig.dataset.highlighted = "false";
    });
    const sizes = Object.fromEntries(trace.images.map((im) => [im.id, im.size]));
    proto.nearest.forEach((n, rank) => {
      const fig = supports.querySelector(`.support[data-image-id="${n.image}"]`);
      if (!fig) return;
      const [W, H] = sizes[n.image];
      const [x0, y0, x1, y1] = n.box;
      const box = el("div", { class: "hl", dataset: { rank, similarity: n.similarity }, title: `#${rank + 1} · ${n.similarity.toFixed(3)} · ${x1 - x0}×${y1 - y0} px` });
      Object.assign(box.style, { left: `${(100 * x0) / W}%`, top: `${(100 * y0) / H}%`, width: `${(100 * (x1 - x0)) / W}%`, height: `${(100 * (y1 - y0)) / H}%` });
      fig.querySelector(".boxes").append(box);
      fig.dataset.highlighted = "true";
    });
    const shaOf = Object.fromEntries(trace.images.map((im) => [im.id, im.sha256]));
    nearestBox.replaceChildren(...proto.nearest.map((n, rank) => {
      const canvas = el("canvas", { width: 96, height: 96, "aria-hidden": "true" });
      loadImage(artifactUrl(shaOf[n.image])).then((img) => drawCrop(canvas, img, n.box)).catch(() => {});
      return el("figure", { dataset: { rank } }, canvas, el("figcaption", {}, `#${rank + 1} · ${n.similarity.toFixed(3)}`));
    }));
    nearestBox.dataset.part = String(index);
    scrollToNearest();
  }

  function showParts(data) {
    trace = data;
    showSupports(data.images);
    const shaOf = Object.fromEntries(data.images.map((im) => [im.id, im.sha256]));
    const buttons = data.prototypes.map((p, i) => {
      const canvas = el("canvas", { width: 96, height: 96, "aria-hidden": "true" });
      const first = p.nearest[0];
      if (first) loadImage(artifactUrl(shaOf[first.image])).then((img) => drawCrop(canvas, img, first.box)).catch(() => {});
      const label = `${p.kind.replace("_", " ")} ${p.index}`;
      const button = el("button", { type: "button", class: "part", "aria-pressed": "false",
        dataset: { partIndex: i, prototypeId: p.id, kind: p.kind }, "aria-label": `${label}, nearest similarity ${first ? first.similarity.toFixed(3) : "n/a"}` },
        canvas, el("span", {}, label), el("span", { class: "sim" }, first ? first.similarity.toFixed(3) : ""));
      button.addEventListener("mouseenter", () => highlight(i));
      button.addEventListener("focus", () => highlight(i));
      button.addEventListener("click", () => highlight(i));
      button.addEventListener("keydown", (ev) => {
        const step = { ArrowRight: 1, ArrowDown: 1, ArrowLeft: -1, ArrowUp: -1 }[ev.key];
        if (!step) return;
        ev.preventDefault();
        const next = partsList.querySelector(`.part[data-part-index="${(i + step + data.prototypes.length) % data.prototypes.length}"]`);
        if (next) next.focus();
      });
      return el("li", {}, button);
    });
    partsList.replaceChildren(...buttons);
    partsStatus.textContent = data.prototypes.length
      ? `${plural(data.prototypes.length, `${NOUN[data.sheet]} prototype`)}, ${plural(data.top, "nearest patch", "nearest patches")} each`
      : `This set has no ${NOUN[data.sheet]} prototypes.`;
    partsList.dataset.sheet = data.sheet;
    partsList.dataset.ready = "true";
    if (data.prototypes.length) highlight(0);
    else { supports.replaceChildren(); nearestBox.replaceChildren(); }
  }

  let setId = null;
  const tabs = Array.from(document.querySelectorAll('[role="tab"]'));

  async function showSheet(sheet) {
    tabs.forEach((t) => {
      const on = t.dataset.sheet === sheet;
      t.setAttribute("aria-selected", String(on));
      t.tabIndex = on ? 0 : -1;
    });
    document.getElementById("sheet-panel").setAttribute("aria-labelledby", `tab-${sheet}`);
    partsList.dataset.ready = "false";
    partsStatus.classList.remove("error");
    partsStatus.textContent = `Tracing ${sheet} prototypes to their support patches…`;
    try {
      showParts(await api(`/api/sets/${encodeURIComponent(setId)}/${sheet}`));
    } catch (err) {
      partsStatus.textContent = `Could not trace ${sheet}: ${err.message}`;
      partsStatus.classList.add("error");
    }
  }

  tabs.forEach((t, i) => {
    t.addEventListener("click", () => showSheet(t.dataset.sheet));
    t.addEventListener("keydown", (ev) => {  // the ARIA tabs pattern: arrows move between tabs
      const step = { ArrowRight: 1, ArrowLeft: -1 }[ev.key];
      if (!step) return;
      ev.preventDefault();
      const next = tabs[(i + step + tabs.length) % tabs.length];
      next.focus();
      showSheet(next.dataset.sheet);
    });
  });

  // ------------------------------------------------------------------ support images with masks drawn over them
  const LAYERS = { foreground: [46, 204, 64], background: [230, 40, 40], attention: [255, 200, 0] };  // as protodb inspect
  const maskRows = [];  // {im, base, layers: {foreground, background, attention}, canvas}
  const maskOpacity = document.getElementById("mask-opacity");
  const maskZoom = document.getElementById("mask-zoom");
  const layerBoxes = { foreground: document.getElementById("layer-fg"), background: document.getElementById("layer-bg"),
    attention: document.getElementById("layer-att") };

  function drawMasked(r) {
    if (!r.base) return;
    const ctx = r.canvas.getContext("2d");
    ctx.globalAlpha = 1;
    ctx.drawImage(r.base, 0, 0, r.canvas.width, r.canvas.height);
    ctx.globalAlpha = Number(maskOpacity.value) / 100;
    const on = [];
    for (const name of ["background", "foreground", "attention"]) {
      if (r.layers[name] && layerBoxes[name].checked) {
        ctx.drawImage(r.layers[name], 0, 0);
        on.push(name);
      }
    }
    ctx.globalAlpha = 1;
    r.canvas.dataset.layers = on.join(",");
    r.canvas.dataset.opacity = maskOpacity.value;
  }

  function redrawMasks() {
    document.getElementById("mask-opacity-value").textContent = `${maskOpacity.value}%`;
    const z = Number(maskZoom.value);
    document.getElementById("mask-zoom-value").textContent = `${z}×`;
    const box = document.getElementById("support-images");
    box.style.setProperty("--mask-width", `${SUPPORT_WIDTH * z}px`);
    box.classList.toggle("crisp", z >= 2);
    maskRows.forEach(drawMasked);
  }
  [maskOpacity, maskZoom, ...Object.values(layerBoxes)].forEach((c) => c.addEventListener("input", redrawMasks));

  async function prepareRow(r) {
    const im = r.im;
    const [w, h] = im.size;
    try {
      r.base = await loadImage(artifactUrl(im.sha256));
      const masks = { foreground: im.masks.foreground, background: im.masks.background, attention: im.attention_sha256 };
      for (const [name, sha] of Object.entries(masks)) {
        if (!sha) continue;
        const img = await loadImage(artifactUrl(sha));
        r.layers[name] = maskLayer(img, w, h, LAYERS[name], name === "attention");
      }
      const fg = r.layers.foreground ? Number(r.layers.foreground.dataset.fraction) : null;
      r.canvas.dataset.ready = "true";
      if (fg !== null) r.share.textContent = ` · foreground ${(100 * fg).toFixed(0)}% of the image`;
      drawMasked(r);
    } catch (err) {
      r.share.textContent = ` · ${err.message}`;
    }
  }

  async function showSupportImages() {
    const box = document.getElementById("support-images");
    const note = document.getElementById("images-status");
    try {
      const data = await api(`/api/sets/${encodeURIComponent(setId)}/images`);
      maskRows.length = 0;
      const link = (sha, what) => sha ? el("a", { href: artifactUrl(sha), target: "_blank", rel: "noopener", dataset: { what } }, what) : null;
      box.replaceChildren(...data.images.map((im) => {
        const canvas = el("canvas", { width: im.size[0], height: im.size[1], role: "img",
          "aria-label": `support image ${im.id.slice(0, 8)} with its masks drawn over it` });
        const share = el("span", {});
        const r = { im, canvas, share, base: null, layers: {} };
        maskRows.push(r);
        const links = [link(im.sha256, "image"), link(im.masks.foreground, "foreground mask"),
          link(im.masks.background, "background mask"), link(im.attention_sha256, "attention")].filter(Boolean);
        return el("figure", { class: "support-row", dataset: { imageId: im.id } },
          canvas,
          el("figcaption", {},
            `${im.source}${im.seed !== null ? ` · seed ${im.seed}` : ""}${im.origin ? ` · ${im.origin}` : ""} · ${im.size[0]}×${im.size[1]}`,
            share,
            el("span", { class: "files" }, " · files: ", links.map((a, i) => [i ? ", " : "", a]))));
      }));
      const grid = gridName(data.mask_extractor);
      note.textContent = `${plural(data.images.length, "support image")}; masks made on the patch grid of ${grid || "its extractor"}. Green: foreground, red: background.`;
      redrawMasks();
      await Promise.all(maskRows.map(prepareRow));
      box.dataset.ready = "true";
    } catch (err) {
      note.textContent = `Could not list the support images: ${err.message}`;
    }
  }

  async function relabel(ev) {
    ev.preventDefault();
    const out = document.getElementById("relabel-status");
    const kind = document.getElementById("relabel-kind").value;
    const token = document.getElementById("relabel-token").value;
    const cls = document.getElementById("set-title").dataset.class;
    out.textContent = "Saving…";
    try {
      const res = await api(`/api/classes/${encodeURIComponent(cls)}/label`, {
        method: "POST", body: JSON.stringify({ kind }),
        headers: { "Content-Type": "application/json", Authorization: `Bearer ${token}` } });
      out.textContent = `Now ${res.kind} (${plural(res.history.length, "decision")} in the history).`;
      const badge = document.getElementById("set-kind");
      badge.textContent = res.kind;
      badge.className = `badge kind-${res.kind}`;
    } catch (err) {
      out.textContent = err.message;
    }
  }

  async function load() {
    try {
      const data = await api(`/api/sets/${encodeURIComponent(key)}`);
      showProvenance(data);
      document.getElementById("set-body").hidden = false;
      status.textContent = `${data.ref}: ${plural(data.provenance.images.length, "support image")}`;
      const health = await serverStatus();
      if (health && health.writes) document.getElementById("relabel-section").hidden = false;
      document.getElementById("relabel").addEventListener("submit", relabel);
      setId = data.set.id;
      showSupportImages();
      await showSheet("parts");
    } catch (err) {
      // an unknown set: its error alone, no empty provenance or sections
      document.getElementById("set-body").hidden = true;
      document.getElementById("set-title").textContent = "No such prototype set";
      status.textContent = err.message;
      status.classList.add("error");
      status.dataset.failed = "true";
      serverStatus();
    }
  }

  load();
})();
