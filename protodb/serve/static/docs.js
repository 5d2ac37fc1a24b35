/* The API reference, rendered from the framework's OpenAPI document (no CDN, no Swagger bundle). */
"use strict";
(() => {
  const { api, el, serverStatus, richText } = protodb;
  const out = document.getElementById("endpoints");
  const status = document.getElementById("docs-status");

  function typeOf(schema) {
    if (!schema) return "";
    if (schema.$ref) return schema.$ref.split("/").pop();
    if (schema.anyOf) return schema.anyOf.map(typeOf).filter(Boolean).join(" | ");
    if (schema.type === "array") return `${typeOf(schema.items)}, repeatable`;
    if (schema.format === "binary") return "file";
    return schema.type || "";
  }

  /** A docstring as paragraphs and lists, with ``code`` (RST) and `code` shown as code. */
  function docBlock(text) {
    const blocks = text.split(/\n\s*\n/).map((b) => b.trim()).filter(Boolean);
    return el("div", { class: "doc" }, blocks.map((b) => {
      const lines = b.split("\n").map((l) => l.trim());
      if (lines.every((l) => l.startsWith("- "))) return el("ul", {}, lines.map((l) => el("li", {}, richText(l.slice(2)))));
      return el("p", {}, richText(lines.join(" ")));
    }));
  }

  function table(headers, rows) {
    return el("table", { class: "params" },
      el("thead", {}, el("tr", {}, headers.map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, rows));
  }

  function paramRows(params) {
    return params.map((p) => el("tr", { dataset: { param: p.name } },
      el("td", {}, el("code", {}, p.name)), el("td", {}, p.in === "query" ? "query or form" : p.in),
      el("td", {}, p.required ? "yes" : ""), el("td", {}, typeOf(p.schema)),
      el("td", {}, richText(p.description || (p.schema && p.schema.description) || ""))));
  }

  /** The request body: multipart fields as a table, other media types as one line each. */
  function bodyBlock(body, queryNames) {
    if (!body || !body.content) return null;
    const parts = [];
    for (const [media, spec] of Object.entries(body.content)) {
      const schema = spec.schema || {};
      if (schema.properties) {
        const required = new Set(schema.required || []);
        const rows = Object.entries(schema.properties)
          .filter(([name]) => !queryNames.has(name))  // the same fields as the query: already in the table above
          .map(([name, s]) => el("tr", { dataset: { field: name } },
            el("td", {}, el("code", {}, name)), el("td", {}, required.has(name) ? "yes" : ""), el("td", {}, typeOf(s)),
            el("td", {}, richText(s.description || ""))));
        parts.push(el("p", {}, "Body ", el("code", {}, media), queryNames.size ? " (the fields above may be sent here too):" : ":"));
        if (rows.length) parts.push(table(["field", "required", "type", "about"], rows));
      } else {
        parts.push(el("p", {}, "Body ", el("code", {}, media), ": ", richText(schema.description || typeOf(schema))));
      }
    }
    return el("div", { class: "body-doc" }, parts);
  }

  async function load() {
    try {
      const doc = await api("/api/openapi.json");
      const sections = [];
      for (const [path, ops] of Object.entries(doc.paths)) {
        for (const [method, op] of Object.entries(ops)) {
          const params = op.parameters || [];
          const queryNames = new Set(params.filter((p) => p.in === "query").map((p) => p.name));
          const responses = Object.entries(op.responses || {}).map(([code, r]) => `${code} ${r.description || ""}`.trim());
          sections.push(el("section", { class: "endpoint", dataset: { method, path } },
            el("h2", {}, el("code", {}, `${method.toUpperCase()} ${path}`)),
            el("p", {}, el("strong", {}, op.summary || "")),
            op.description ? docBlock(op.description) : null,
            params.length ? table(["name", "in", "required", "type", "about"], paramRows(params)) : null,
            bodyBlock(op.requestBody, queryNames),
            el("p", { class: "muted" }, `Responses: ${responses.join(" · ")}`)));
        }
      }
      out.replaceChildren(...sections);
      status.textContent = `${doc.info.title} ${doc.info.version}: ${sections.length} endpoints. HEAD works wherever GET does.`;
      out.dataset.ready = "true";
    } catch (err) {
      status.textContent = `Could not load the OpenAPI document: ${err.message}`;
      status.classList.add("error");
    }
  }

  serverStatus();
  load();
})();
