/* The API reference, rendered from the framework's OpenAPI document (no CDN, no Swagger bundle). */
"use strict";
(() => {
  const { api, el, serverStatus } = protodb;
  const out = document.getElementById("endpoints");
  const status = document.getElementById("docs-status");

  function typeOf(schema, doc) {
    if (!schema) return "";
    if (schema.$ref) return schema.$ref.split("/").pop();
    if (schema.anyOf) return schema.anyOf.map((s) => typeOf(s, doc)).join(" | ");
    return schema.type || "";
  }

  async function load() {
    try {
      const doc = await api("/api/openapi.json");
      const sections = [];
      for (const [path, ops] of Object.entries(doc.paths)) {
        for (const [method, op] of Object.entries(ops)) {
          const params = (op.parameters || []).map((p) => el("tr", {},
            el("td", {}, el("code", {}, p.name)), el("td", {}, p.in), el("td", {}, p.required ? "yes" : ""),
            el("td", {}, typeOf(p.schema, doc)), el("td", {}, p.description || (p.schema && p.schema.description) || "")));
          const responses = Object.entries(op.responses || {}).map(([code, r]) => `${code} ${r.description || ""}`.trim());
          sections.push(el("section", { class: "endpoint", dataset: { method, path } },
            el("h2", {}, el("code", {}, `${method.toUpperCase()} ${path}`)),
            el("p", {}, el("strong", {}, op.summary || "")),
            op.description ? el("p", { class: "doc" }, op.description) : null,
            params.length ? el("table", { class: "params" },
              el("thead", {}, el("tr", {}, ["name", "in", "required", "type", "about"].map((h) => el("th", { scope: "col" }, h)))),
              el("tbody", {}, params)) : null,
            el("p", { class: "muted" }, `Responses: ${responses.join(" · ")}`)));
        }
      }
      out.replaceChildren(...sections);
      status.textContent = `${doc.info.title} ${doc.info.version}: ${sections.length} endpoints`;
      out.dataset.ready = "true";
    } catch (err) {
      status.textContent = `Could not load the OpenAPI document: ${err.message}`;
      status.classList.add("error");
    }
  }

  serverStatus();
  load();
})();
