/* protodb serve: helpers shared by the pages (no framework, no build step). */
"use strict";

const protodb = (() => {
  /** fetch JSON from the API; a non-2xx answer throws Error(the server's one-line "error"). */
  async function api(path, options = {}) {
    const res = await fetch(path, { headers: { Accept: "application/json", ...(options.headers || {}) }, ...options });
    let body = null;
    try { body = await res.json(); } catch (_) { body = null; }
    if (!res.ok) {
      const message = body && body.error ? body.error : `HTTP ${res.status}`;
      const err = new Error(message);
      err.status = res.status;
      err.retryAfter = res.headers.get("Retry-After");
      throw err;
    }
    return body;
  }

  /** el("a", {href: "/", class: "x", dataset: {id: 1}}, "text", child) */
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "dataset") Object.assign(node.dataset, v);
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("on") && typeof v === "function") node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat(Infinity)) {
      if (c === null || c === undefined || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  const artifactUrl = (sha) => `/api/artifacts/${sha}`;

  const images = new Map();
  /** An <img> for a URL, decoded once per page. */
  function loadImage(url) {
    const load = () => new Promise((resolve, reject) => {
      const img = new Image();
      img.onload = () => resolve(img);
      img.onerror = () => reject(new Error(`cannot load ${url.slice(0, 60)}`));
      img.src = url;
    });
    if (url.startsWith("data:") || url.startsWith("blob:")) return load();  // one-off: not kept
    if (!images.has(url)) images.set(url, load());
    return images.get(url);
  }

  /** Draw the box [x0, y0, x1, y1] of img into canvas with `context` boxes of margin, box outlined
   *  (the same crop as protodb inspect's contact sheets). */
  function drawCrop(canvas, img, box, context = 2) {
    const [x0, y0, x1, y1] = box;
    const pw = Math.max(1, x1 - x0), ph = Math.max(1, y1 - y0);
    const cx0 = Math.max(0, x0 - context * pw), cy0 = Math.max(0, y0 - context * ph);
    const cx1 = Math.min(img.naturalWidth, x1 + context * pw), cy1 = Math.min(img.naturalHeight, y1 + context * ph);
    const ctx = canvas.getContext("2d");
    ctx.imageSmoothingEnabled = true;
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ctx.drawImage(img, cx0, cy0, cx1 - cx0, cy1 - cy0, 0, 0, canvas.width, canvas.height);
    const sx = canvas.width / Math.max(1, cx1 - cx0), sy = canvas.height / Math.max(1, cy1 - cy0);
    ctx.strokeStyle = "#ff2828";
    ctx.lineWidth = 2;
    ctx.strokeRect((x0 - cx0) * sx + 1, (y0 - cy0) * sy + 1, (x1 - x0) * sx - 2, (y1 - y0) * sy - 2);
  }

  /** "1 image", "3 images"; `many` for irregular plurals. */
  function plural(n, one, many = `${one}s`) {
    return `${n} ${Number(n) === 1 ? one : many}`;
  }

  /** Text with RST/Markdown inline code (``x``, `x`, :role:`x`) as <code> nodes (never HTML). */
  function richText(text) {
    const out = [];
    const re = /``([^`]+)``|:[a-z]+:`([^`]+)`|`([^`]+)`/g;
    let last = 0, m;
    while ((m = re.exec(text)) !== null) {
      if (m.index > last) out.push(text.slice(last, m.index));
      out.push(el("code", {}, m[1] || m[2] || m[3]));
      last = re.lastIndex;
    }
    if (last < text.length) out.push(text.slice(last));
    return out;
  }

  /** A mask or map image (white = on) as an RGBA layer of `colour` at the given size (nearest
   *  neighbour: patch-grid blocks stay blocks). `heat`: the grey level is the alpha. */
  function maskLayer(img, width, height, colour, heat = false) {
    const c = document.createElement("canvas");
    c.width = width;
    c.height = height;
    const ctx = c.getContext("2d");
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(img, 0, 0, width, height);
    const data = ctx.getImageData(0, 0, width, height);
    const d = data.data;
    let on = 0;
    for (let i = 0; i < d.length; i += 4) {
      const v = d[i];
      if (heat) {
        d[i] = colour[0]; d[i + 1] = Math.round(colour[1] * (1 - v / 255)); d[i + 2] = colour[2]; d[i + 3] = v;
      } else if (v > 127) {
        d[i] = colour[0]; d[i + 1] = colour[1]; d[i + 2] = colour[2]; d[i + 3] = 255; on++;
      } else {
        d[i + 3] = 0;
      }
    }
    ctx.putImageData(data, 0, 0);
    c.dataset.fraction = String(on / (width * height));
    return c;
  }

  function fmtBytes(n) {
    const units = ["B", "KiB", "MiB", "GiB"];
    let v = Number(n) || 0, i = 0;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return i === 0 ? `${v} B` : `${v.toFixed(1)} ${units[i]}`;
  }

  function fmtDate(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    return isNaN(d) ? iso : d.toISOString().slice(0, 16).replace("T", " ") + " UTC";
  }

  async function serverStatus() {
    const node = document.getElementById("server-status");
    if (!node) return null;
    try {
      const h = await api("/api/health");
      node.textContent = `protodb ${h.protodb_version} · schema ${h.schema_revision} · writes ${h.writes ? "on" : "off"}`;
      return h;
    } catch (err) {
      node.textContent = `server unreachable: ${err.message}`;
      return null;
    }
  }

  return { api, el, artifactUrl, loadImage, drawCrop, fmtBytes, fmtDate, serverStatus, plural, richText, maskLayer };
})();
