/* Gallery: every class with its ready versions, thing/stuff label, a support-image thumbnail. */
"use strict";
(() => {
  const { api, el, artifactUrl, fmtBytes, fmtDate, serverStatus, plural } = protodb;
  const list = document.getElementById("gallery");
  const status = document.getElementById("gallery-status");
  const filter = document.getElementById("filter");
  let classes = [];

  function card(c) {
    const newest = c.versions[c.versions.length - 1];
    const thumb = newest && newest.thumbnail
      ? el("img", { class: "thumb", src: artifactUrl(newest.thumbnail), alt: `a support image of ${c.name}`, loading: "lazy", width: 230, height: 172 })
      : el("div", { class: "thumb none", text: "no image" });
    const versions = el("ol", { class: "versions", "aria-label": `versions of ${c.name}` },
      c.versions.slice().reverse().map((v) => el("li", { dataset: { version: v.version } },
        v.sets_detail.map((s, i) => [i ? " · " : "",
          el("a", { href: `/sets/${s.id}`, class: "version-link", dataset: { setId: s.id, version: v.version, extractor: s.extractor } },
            `v${v.version} ${s.extractor}`)]),
        el("div", { class: "muted" },
          `${plural(Object.values(v.counts).reduce((a, b) => a + b, 0), "prototype")} · ${plural(v.images, "image")} · ${fmtBytes(v.bytes)}`,
          v.tags.length ? ` · tags ${v.tags.join(", ")}` : ""),
        el("div", { class: "muted" }, fmtDate(v.created_at)),
        v.sets_detail.some((s) => s.preset === "tiny") ? el("span", { class: "badge preset", title: "built with stand-in models" }, "preset tiny") : null,
      )));
    return el("li", { class: "card", dataset: { class: c.name, kind: c.kind } },
      thumb,
      el("div", { class: "body" },
        el("h2", {}, el("span", { class: "class-name" }, c.name),
          el("span", { class: `badge kind-${c.kind}`, dataset: { role: "kind" } }, c.kind)),
        versions));
  }

  function render() {
    const q = filter.value.trim().toLowerCase();
    const kind = document.querySelector('input[name="kind"]:checked').value;
    const shown = classes.filter((c) => (!q || c.name.includes(q)) && (!kind || c.kind === kind));
    list.replaceChildren(...shown.map(card));
    status.textContent = classes.length
      ? `${shown.length} of ${plural(classes.length, "class", "classes")}`
      : "No classes yet: build one with protodb add-class NAME.";
    list.dataset.ready = "true";
  }

  let last = "";
  async function load() {
    try {
      const data = await api("/api/classes");
      const text = JSON.stringify(data.classes);
      if (text !== last) {  // new classes or versions (another process built them): shown without a reload
        last = text;
        classes = data.classes;
        render();
      }
      status.classList.remove("error");
    } catch (err) {
      status.textContent = `Could not load classes: ${err.message}`;
      status.classList.add("error");
    }
  }
  setInterval(() => { if (!document.hidden) load(); }, 5000);

  filter.addEventListener("input", render);
  document.querySelectorAll('input[name="kind"]').forEach((r) => r.addEventListener("change", render));
  serverStatus();
  load();
})();
