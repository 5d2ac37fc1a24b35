/* One prototype set: provenance, its prototypes (parts, instances, background) traced to their nearest
 * support patches, and its support images with masks and attention maps. */
"use strict";
(() => {
  const { api, el, artifactUrl, loadImage, drawCrop, fmtBytes, fmtDate, serverStatus } = protodb;
  const key = decodeURIComponent(location.pathname.replace(/^\/sets\//, ""));
  const status = document.getElementById("set-status");
  const partsStatus = document.getElementById("parts-status");
  const partsList = document.getElementById("parts");
  const supports = document.getElementById("supports");
  const nearestBox = document.getElementById("nearest");
  let trace = null;
  const NOUN = { parts: "part", instances: "instance", background: "background" };

  function row(dl, term, value) {
    if (value === null || value === undefined || value === "") return;
    dl.append(el("dt", {}, term), el("dd", {}, value));
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
    row(dl, "support images", `${p.images.length} (${ex} exemplars)` + (p.seeds.length ? `, seeds ${p.seeds.slice(0, 8).join(", ")}` : ""));
    if (p.generator) row(dl, "generator", `${p.generator.model_id} @ ${p.generator.revision || "?"}, ${p.generator.steps} steps, guidance ${p.generator.guidance}; prompt “${p.generator.prompt}”`);
    row(dl, "masks", Object.entries(p.masks).map(([m, params]) => `${m} ${JSON.stringify(params)}`).join("; "));
    row(dl, "label history", p.label.history.map((h) => `${h.source} → ${h.kind}`).join("; "));
    row(dl, "config", `${String(p.config_hash).slice(0, 16)}${p.config ? ` · k=${p.config.k} seed=${p.config.seed}` : ""}`);
    if (p.params && p.params.preset) row(dl, "preset", `${p.params.preset} (stand-in models: not meaningful)`);
    row(dl, "bytes", `vectors ${fmtBytes(p.bytes.vectors)} · images ${fmtBytes(p.bytes.images)} · masks ${fmtBytes(p.bytes.masks)}`);
    row(dl, "tags", (p.tags || []).join(", "));
    document.getElementById("prov-json").textContent = JSON.stringify(p, null, 1);
    document.getElementById("relabel-kind").value = s.kind === "thing" ? "stuff" : "thing";
  }

  function showSupports(images) {
    supports.replaceChildren(...images.map((im) => el("figure", { class: "support", dataset: { imageId: im.id } },
      el("div", { class: "frame" },
        el("img", { src: artifactUrl(im.sha256), alt: `support image ${im.id.slice(0, 8)} (${im.source})`, width: im.size[0], height: im.size[1] }),
        el("div", { class: "boxes" })),
      el("figcaption", {}, `${im.source} · ${im.size[0]}×${im.size[1]}`))));
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
      const box = el("div", { class: "hl", dataset: { rank, similarity: n.similarity } });
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
      ? `${data.prototypes.length} ${NOUN[data.sheet]} prototypes, ${data.top} nearest patches each`
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

  async function showSupportImages() {
    const box = document.getElementById("support-images");
    const note = document.getElementById("images-status");
    try {
      const data = await api(`/api/sets/${encodeURIComponent(setId)}/images`);
      const thumb = (sha, what, im) => sha
        ? el("figure", { dataset: { what } }, el("img", { src: artifactUrl(sha), alt: `${what} of support image ${im.id.slice(0, 8)}`, loading: "lazy" }),
          el("figcaption", {}, what))
        : null;
      box.replaceChildren(...data.images.map((im) => el("div", { class: "support-row", dataset: { imageId: im.id } },
        thumb(im.sha256, "image", im), thumb(im.masks.foreground, "foreground mask", im),
        thumb(im.masks.background, "background mask", im), thumb(im.attention_sha256, "attention", im),
        el("p", { class: "muted" }, `${im.source}${im.seed !== null ? ` · seed ${im.seed}` : ""}${im.origin ? ` · ${im.origin}` : ""} · ${im.size[0]}×${im.size[1]}`))));
      note.textContent = `${data.images.length} support images; masks made on extractor ${data.mask_extractor_id.slice(0, 12)}'s patch grid.`;
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
      out.textContent = `Now ${res.kind} (${res.history.length} decisions in the history).`;
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
      status.textContent = `${data.ref}: ${data.provenance.images.length} support images`;
      const health = await serverStatus();
      if (health && health.writes) document.getElementById("relabel-section").hidden = false;
      document.getElementById("relabel").addEventListener("submit", relabel);
      setId = data.set.id;
      showSupportImages();
      await showSheet("parts");
    } catch (err) {
      status.textContent = err.message;
      status.classList.add("error");
      partsStatus.textContent = "";
    }
  }

  load();
})();
