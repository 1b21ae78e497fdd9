(function () {
"use strict";
const $ = (id) => document.getElementById(id);
function fail(err) {
  const info = $("info");
  if (info) { info.className = "info error"; info.textContent = "This page could not be drawn: " + err; }
  document.body.dataset.ready = "error";
}
// ---- data: every blob is deflated, then base64; the browser inflates them before the first draw ----------
function bytesOf(b64) {
  const bin = atob(b64), n = bin.length, out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = bin.charCodeAt(i);
  return out;
}
async function inflate(b64) {
  if (b64 === null) return null;
  const stream = new Blob([bytesOf(b64)]).stream().pipeThrough(new DecompressionStream("deflate"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}
let D;
const times = { script: performance.now() };  // ms since navigation: when each loading step ended
try {
  D = JSON.parse($("hf-data").textContent);
  times.parsed = performance.now();
} catch (err) { fail(err); throw err; }
Promise.all([Promise.all(D.keep.map(inflate)), Promise.all(D.w.map((heads) => Promise.all(heads.map(inflate))))])
  .then(([keepBits, planes]) => {
    D.keep = keepBits; D.w = planes;
    times.inflated = performance.now();
    try { main(); } catch (err) { fail(err); throw err; }
    times.drawn = performance.now();
  }, (err) => { fail(err); throw err; });

function main() {
const T = D.T, L = D.L, H = D.H, Q = D.q, TT = T * T;
const SMALL = T <= 64;
const st = { l: 0, h: 0, view: "single", hover: -1, pinned: false, scale: "linear" };

const keeps = new Array(L).fill(null);
function keepOf(l) {
  if (keeps[l]) return keeps[l];
  const k = new Uint8Array(TT);
  if (D.keep[l] === null) k.fill(1);
  else {
    const b = D.keep[l];
    for (let i = 0; i < b.length; i++) {
      const v = b[i], base = i << 3;
      if (v === 0) continue;
      for (let j = 0; j < 8 && base + j < TT; j++) k[base + j] = (v >> (7 - j)) & 1;
    }
  }
  return (keeps[l] = k);
}
const cache = new Map();
const CAP = Math.max(2, Math.floor(16e6 / TT));
// Float32Array [T*T]: the weight, or -1 where the mask forbids attending.
function matrix(l, h) {
  const key = l * H + h;
  let m = cache.get(key);
  if (m) { cache.delete(key); cache.set(key, m); return m; }
  // the stored cells' low bytes, then their high bytes
  const keep = keepOf(l), b = D.w[l][h], n = b.length >> 1, off = D.masked ? -1 : 0;
  m = new Float32Array(TT);
  let j = 0;
  for (let i = 0; i < TT; i++) {
    if (keep[i]) { m[i] = (b[j] | (b[n + j] << 8)) / Q; j++; } else m[i] = off;
  }
  cache.set(key, m);
  while (cache.size > CAP) cache.delete(cache.keys().next().value);
  return m;
}
const cur = () => matrix(st.l, st.h);

// ---- colours ----------------------------------------------------------------------------
const STOPS = [[255, 255, 255], [198, 219, 239], [107, 174, 214], [33, 113, 181], [8, 48, 107]];
const LUT = new Uint8Array(256 * 3);
for (let i = 0; i < 256; i++) {
  const x = (i / 255) * (STOPS.length - 1), a = Math.min(Math.floor(x), STOPS.length - 2), f = x - a;
  for (let c = 0; c < 3; c++) LUT[i * 3 + c] = Math.round(STOPS[a][c] * (1 - f) + STOPS[a + 1][c] * f);
}
const MASK_PIX = [212, 212, 216], MASK_BG = [238, 238, 240];
const tone = (v) => (st.scale === "sqrt" ? Math.sqrt(v) : v);
const lutIndex = (v) => Math.max(0, Math.min(255, Math.round(tone(v) * 255)));
const rgb = (v) => { const i = lutIndex(v) * 3; return "rgb(" + LUT[i] + "," + LUT[i + 1] + "," + LUT[i + 2] + ")"; };

// ---- text -------------------------------------------------------------------------------
const shown = (t) => (t === "" ? "\u2205" : t.replace(/\n/g, "\u21b5").replace(/\t/g, "\u21e5").replace(/\r/g, "\u240d"));
const quoted = (i) => JSON.stringify(D.tokens[i]);
const label = (i) => { const s = shown(D.tokens[i]); return s.length > 14 ? s.slice(0, 13) + "\u2026" : s; };
const fmt = (v) => v.toFixed(3);

// ---- grouped-query heads, mask notes ------------------------------------------------------
// D.groups[l] = [n_heads, n_kv_heads] of the model's layer (null: every head has its own keys and values)
const groupOf = (l) => (D.groups && D.groups[l]) || null;
const grouped = (l) => { const g = groupOf(l); return g !== null && g[1] < g[0]; };
function kvOf(l, h) {  // the key/value head that shown head h (an index) reads
  const g = groupOf(l), id = D.head_ids[h];
  return g === null ? id : Math.floor(id / (g[0] / g[1]));
}
function mates(l, h) {  // the model's query heads (ids) that read the same keys and values as head h
  const g = groupOf(l);
  if (g === null) return [D.head_ids[h]];
  const size = g[0] / g[1], kv = kvOf(l, h), out = [];
  for (let i = kv * size; i < (kv + 1) * size; i++) out.push(i);
  return out;
}
const noteOf = (l) => (D.notes && D.notes[l]) || "";
const KV_HUES = [210, 28, 140, 280, 0, 175, 50, 320];
const kvColour = (kv) => "hsl(" + KV_HUES[kv % KV_HUES.length] + ", 70%, " + (kv >= KV_HUES.length ? 35 : 50) + "%)";
function noteText(l) {
  const n = noteOf(l), band = /^band (\d+)$/.exec(n), prefix = /^prefix (\d+)$/.exec(n);
  if (band) return "sliding window: each token sees itself and the " + (+band[1] - 1) + " tokens before it (band " +
    band[1] + "); grey cells lie outside the band";
  if (prefix) return "prefix: the first " + prefix[1] + " tokens see each other both ways, later ones are causal";
  if (n === "causal") return "causal: each token sees itself and every token before it";
  if (n === "bidirectional") return "no mask: every token sees every token";
  return n;
}
const kvTag = (l, h) => (grouped(l) ? " \u00b7 kv " + kvOf(l, h) : "");
const where = () => "layer " + D.layer_ids[st.l] + ", head " + D.head_ids[st.h] + kvTag(st.l, st.h);

// ---- controls ---------------------------------------------------------------------------
$("title").textContent = D.title || "Attention patterns";
$("shape").textContent = T + " tokens \u00b7 " + L + " layer" + (L > 1 ? "s" : "") + " \u00d7 " + H + " head" +
  (H > 1 ? "s" : "") + " \u00b7 rows = queries (the token looking), columns = keys (the token looked at)";
function fillSelect(sel, ids, word) {
  ids.forEach((id, i) => {
    const o = document.createElement("option");
    o.value = String(i); o.textContent = word + " " + id; sel.appendChild(o);
  });
}
fillSelect($("layer"), D.layer_ids, "layer");
fillSelect($("head"), D.head_ids, "head");
function labelOptions() {  // "layer 1 · band 4"; "head 5 · kv 1" (the heads of the layer shown)
  [...$("layer").options].forEach((o, l) => {
    const n = noteOf(l);
    o.textContent = "layer " + D.layer_ids[l] + (n && n !== "causal" ? " \u00b7 " + n : "");
  });
  [...$("head").options].forEach((o, h) => { o.textContent = "head " + D.head_ids[h] + kvTag(st.l, h); });
}
const kvLine = $("kv");
function showGroups() {
  kvLine.textContent = "";
  const add = (text, cls, tag) => { const s = document.createElement(tag || "span"); s.textContent = text;
    if (cls) s.className = cls; kvLine.appendChild(s); return s; };
  const g = groupOf(st.l), id = D.head_ids[st.h];
  if (!grouped(st.l)) add("head " + id + ": kv = own" + (g ? " (multi-head attention: " + g[0] + " heads, each with its own keys and values)" : ""));
  else {
    const kv = kvOf(st.l, st.h), dot = add("", "kvdot");
    dot.style.background = kvColour(kv);
    add("head " + id + " reads key/value head " + kv + ", shared by query heads ");
    mates(st.l, st.h).forEach((m, i) => {
      if (i) add(", ");
      // a head of this page that shares the keys and values: a button that shows it
      const shown = D.head_ids.indexOf(m), link = shown >= 0 && m !== id;
      const b = add(String(m), "mate" + (m === id ? " self" : "") + (shown < 0 ? " absent" : ""), link ? "button" : "span");
      b.dataset.head = String(m);
      if (link) { b.type = "button"; b.title = "show head " + m; b.addEventListener("click", () => select(st.l, shown)); }
    });
    add(" \u00b7 " + g[0] + " query heads share " + g[1] + " key/value head" + (g[1] > 1 ? "s" : "") + " (" +
        g[0] / g[1] + " each)");
  }
  const n = noteText(st.l);
  if (n) add(" \u00b7 layer " + D.layer_ids[st.l] + ": " + n, "note");
}
$("layer").addEventListener("change", (e) => select(+e.target.value, st.h));
$("head").addEventListener("change", (e) => select(st.l, +e.target.value));
$("scale").addEventListener("change", (e) => { st.scale = e.target.value; gridKey = ""; redraw(); });
$("view").addEventListener("click", () => setView(st.view === "single" ? "grid" : "single"));

// ---- token strip ------------------------------------------------------------------------
const strip = $("tokens"), spans = new Array(T), badges = new Array(T);
const frag = document.createDocumentFragment();
for (let i = 0; i < T; i++) {
  const s = document.createElement("span"), t = document.createElement("span"), w = document.createElement("span");
  s.className = "tok"; s.dataset.i = String(i);
  t.className = "t"; t.textContent = shown(D.tokens[i]);
  w.className = "w";
  s.appendChild(t); s.appendChild(w); frag.appendChild(s);
  spans[i] = s; badges[i] = w;
}
strip.appendChild(frag);
const indexOf = (el) => { const s = el && el.closest ? el.closest(".tok") : null; return s ? +s.dataset.i : -1; };
strip.addEventListener("mouseover", (e) => { const i = indexOf(e.target); if (i >= 0 && !st.pinned) hover(i); });
strip.addEventListener("mouseleave", () => { if (!st.pinned) hover(-1); });
strip.addEventListener("click", (e) => {
  const i = indexOf(e.target); if (i < 0) return;
  if (st.pinned && st.hover === i) { st.pinned = false; } else { st.pinned = true; hover(i); }
  paintPin();
});
document.addEventListener("keydown", (e) => {
  if (e.target && e.target.tagName === "SELECT") return;
  if (e.key === "Escape") { st.pinned = false; hover(-1); paintPin(); return; }
  if (st.hover < 0) return;
  if (e.key === "ArrowRight" && st.hover < T - 1) { hover(st.hover + 1); paintPin(); e.preventDefault(); }
  if (e.key === "ArrowLeft" && st.hover > 0) { hover(st.hover - 1); paintPin(); e.preventDefault(); }
});
let pinnedSpan = null;
function paintPin() {
  if (pinnedSpan) pinnedSpan.classList.remove("pinned");
  pinnedSpan = st.pinned && st.hover >= 0 ? spans[st.hover] : null;
  if (pinnedSpan) pinnedSpan.classList.add("pinned");
}

let touched = [];
function clearStrip() {
  for (const i of touched) {
    const s = spans[i];
    s.style.background = ""; s.style.color = ""; s.style.boxShadow = "";
    s.classList.remove("masked", "focus");
    delete s.dataset.w; delete s.dataset.by;
    badges[i].textContent = "";
  }
  touched = [];
}
function top(list, n) { return list.sort((a, b) => b[1] - a[1] || a[0] - b[0]).slice(0, n); }
function setInfo(lines) { $("info").textContent = lines.join("\n"); }
function defaultInfo() {
  setInfo([where() + " \u00b7 hover a token to see where it looks and what looks at it; hover the heatmap for one cell"]);
}

function hover(q) {
  st.hover = q;
  clearStrip();
  drawOverlay(null);
  if (q < 0) { defaultInfo(); return; }
  const m = cur(), row = q * T, looks = [], by = [];
  let masked = 0;
  for (let k = 0; k < T; k++) {
    const v = m[row + k], c = m[k * T + q];
    if (v === 0 && !(c > 0) && k !== q) continue;
    const s = spans[k];
    touched.push(k);
    if (v < 0) { s.classList.add("masked"); s.dataset.w = "masked"; badges[k].textContent = "\u00d7"; masked++; }
    else {
      s.dataset.w = fmt(v);
      if (v > 0) {
        s.style.background = rgb(v);
        if (tone(v) > 0.55) s.style.color = "#fff";
        if (v >= 0.005) badges[k].textContent = v >= 0.995 ? "1" : v.toFixed(2).slice(1);
        looks.push([k, v]);
      }
    }
    if (c > 0) {
      s.dataset.by = fmt(c);
      s.style.boxShadow = "inset 0 -4px 0 rgba(217,72,15," + Math.max(0.15, Math.min(1, tone(c))).toFixed(3) + ")";
      by.push([k, c]);
    }
  }
  spans[q].classList.add("focus");
  const name = quoted(q);
  const a = top(looks, 6).map(([k, v]) => name + " \u2192 " + quoted(k) + " " + fmt(v));
  const b = top(by, 6).map(([k, v]) => quoted(k) + " \u2192 " + name + " " + fmt(v));
  const nm = masked ? " \u00b7 " + masked + " key" + (masked > 1 ? "s" : "") + " masked" : "";
  setInfo([
    where() + " \u00b7 token #" + q + " " + name + nm,
    "looks at:     " + (a.length ? a.join(" \u00b7 ") : "(nothing)"),
    "looked at by: " + (b.length ? b.join(" \u00b7 ") : "(nothing)"),
  ]);
  drawOverlay({ q: q, k: -1 });
}

// ---- big heatmap ------------------------------------------------------------------------
const heat = $("heat"), over = $("overlay");
const G = { ml: 0, mt: 0, cs: 1, w: 0, h: 0 };
let dpr = 1;
function layoutBig() {
  dpr = window.devicePixelRatio || 1;
  if (SMALL) {
    const ctx = heat.getContext("2d");
    ctx.font = "12px system-ui, sans-serif";
    let lw = 0;
    for (let i = 0; i < T; i++) lw = Math.max(lw, ctx.measureText(label(i)).width);
    G.cs = Math.max(12, Math.min(44, Math.floor(560 / T)));
    G.ml = Math.ceil(lw) + 12; G.mt = Math.ceil(lw) + 12;
    G.w = G.ml + T * G.cs + 4; G.h = G.mt + T * G.cs + 4;
    heat.width = Math.round(G.w * dpr); heat.height = Math.round(G.h * dpr);
  } else {
    G.cs = Math.max(1, Math.floor(640 / T));
    if (T > 640) G.cs = 640 / T;
    G.ml = 0; G.mt = 0; G.w = T * G.cs; G.h = T * G.cs;
    heat.width = T; heat.height = T;
    heat.style.imageRendering = G.cs >= 1 ? "pixelated" : "auto";
  }
  heat.style.width = G.w + "px"; heat.style.height = G.h + "px";
  over.width = Math.round(G.w * dpr); over.height = Math.round(G.h * dpr);
  over.style.width = G.w + "px"; over.style.height = G.h + "px";
}
function pixels(img, m, n, pool) {
  // m: weights of an n x n grid (-1 masked); writes RGBA into img.data
  const d = img.data;
  for (let i = 0; i < n * n; i++) {
    const v = m[i], o = i * 4;
    if (v < 0) {
      d[o] = MASK_PIX[0]; d[o + 1] = MASK_PIX[1]; d[o + 2] = MASK_PIX[2];
    } else {
      const li = lutIndex(v) * 3;
      d[o] = LUT[li]; d[o + 1] = LUT[li + 1]; d[o + 2] = LUT[li + 2];
    }
    d[o + 3] = 255;
  }
}
function drawBig() {
  const m = cur(), ctx = heat.getContext("2d");
  if (!SMALL) {
    const img = ctx.createImageData(T, T);
    pixels(img, m, T);
    ctx.putImageData(img, 0, 0);
    return;
  }
  const cs = G.cs;
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, G.w, G.h);
  ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, G.w, G.h);
  for (let q = 0; q < T; q++) for (let k = 0; k < T; k++) {
    const v = m[q * T + k], x = G.ml + k * cs, y = G.mt + q * cs;
    if (v < 0) {
      ctx.fillStyle = "rgb(" + MASK_BG.join(",") + ")"; ctx.fillRect(x, y, cs, cs);
      ctx.save(); ctx.beginPath(); ctx.rect(x, y, cs, cs); ctx.clip();
      ctx.strokeStyle = "rgb(150,150,158)"; ctx.lineWidth = 1; ctx.beginPath();
      for (let t = -cs; t < cs; t += 5) { ctx.moveTo(x + t, y + cs); ctx.lineTo(x + t + cs, y); }
      ctx.stroke(); ctx.restore();
    } else { ctx.fillStyle = rgb(v); ctx.fillRect(x, y, cs, cs); }
  }
  ctx.strokeStyle = "rgba(120,130,140,0.35)"; ctx.lineWidth = 1; ctx.beginPath();
  for (let i = 0; i <= T; i++) {
    const p = i * cs + 0.5;
    ctx.moveTo(G.ml + p, G.mt); ctx.lineTo(G.ml + p, G.mt + T * cs);
    ctx.moveTo(G.ml, G.mt + p); ctx.lineTo(G.ml + T * cs, G.mt + p);
  }
  ctx.stroke();
  ctx.fillStyle = "#1f2933"; ctx.font = "12px system-ui, sans-serif"; ctx.textBaseline = "middle";
  for (let i = 0; i < T; i++) {
    ctx.textAlign = "right"; ctx.fillText(label(i), G.ml - 6, G.mt + i * cs + cs / 2);
    ctx.save(); ctx.translate(G.ml + i * cs + cs / 2, G.mt - 6); ctx.rotate(-Math.PI / 2);
    ctx.textAlign = "left"; ctx.fillText(label(i), 0, 0); ctx.restore();
  }
  ctx.fillStyle = "#66707a"; ctx.font = "11px system-ui, sans-serif"; ctx.textAlign = "left";
  ctx.fillText("query \u2193  key \u2192", 2, 10);
  if (cs >= 30) {  // weights as text in the cells when they are big enough
    ctx.font = "10px system-ui, sans-serif"; ctx.textAlign = "center";
    for (let q = 0; q < T; q++) for (let k = 0; k < T; k++) {
      const v = m[q * T + k];
      if (v < 0.005) continue;
      ctx.fillStyle = tone(v) > 0.55 ? "#fff" : "#1f2933";
      ctx.fillText(v >= 0.995 ? "1" : v.toFixed(2).slice(1), G.ml + k * cs + cs / 2, G.mt + q * cs + cs / 2);
    }
  }
}
function drawOverlay(sel) {
  const ctx = over.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, G.w, G.h);
  if (!sel) return;
  const cs = G.cs, lw = Math.max(1.5, Math.min(3, cs / 6)), n = T * cs;
  ctx.lineWidth = lw;
  if (sel.k < 0) {
    ctx.strokeStyle = "#08519c"; ctx.strokeRect(G.ml, G.mt + sel.q * cs, n, Math.max(cs, lw));
    ctx.strokeStyle = "#d9480f"; ctx.strokeRect(G.ml + sel.q * cs, G.mt, Math.max(cs, lw), n);
  } else {
    ctx.strokeStyle = "#111"; ctx.strokeRect(G.ml + sel.k * cs, G.mt + sel.q * cs, Math.max(cs, lw), Math.max(cs, lw));
  }
}
function cellAt(ev) {
  const r = over.getBoundingClientRect();
  const x = ev.clientX - r.left, y = ev.clientY - r.top;
  const k = Math.floor((x - G.ml) / G.cs), q = Math.floor((y - G.mt) / G.cs);
  return q >= 0 && q < T && k >= 0 && k < T ? [q, k] : null;
}
function cellText(q, k) {
  const v = cur()[q * T + k];
  return quoted(q) + " \u2192 " + quoted(k) + " " + (v < 0 ? "masked (may not attend)" : fmt(v));
}
over.addEventListener("mousemove", (ev) => {
  const c = cellAt(ev);
  if (!c) return;
  if (!st.pinned) {
    hover(c[0]);
    setInfo([where() + " \u00b7 query #" + c[0] + ", key #" + c[1], cellText(c[0], c[1])]);
  }
  drawOverlay({ q: c[0], k: c[1] });
});
over.addEventListener("mouseleave", () => { if (!st.pinned) hover(-1); });

// ---- all heads (small multiples) --------------------------------------------------------
const grid = $("grid");
let gridKey = "";
function pooled(m, S) {
  if (S === T) return m;
  const out = new Float32Array(S * S).fill(-1), map = new Int32Array(T);
  for (let i = 0; i < T; i++) map[i] = Math.floor((i * S) / T);
  for (let q = 0; q < T; q++) {
    const r = map[q] * S, row = q * T;
    for (let k = 0; k < T; k++) { const v = m[row + k], o = r + map[k]; if (v > out[o]) out[o] = v; }
  }
  return out;
}
function drawGrid() {
  const key = st.l + "/" + st.scale;
  if (gridKey !== key) {
    gridKey = key;
    grid.textContent = "";
    const S = Math.min(T, 140);
    for (let h = 0; h < H; h++) {
      const fig = document.createElement("figure"), cv = document.createElement("canvas");
      const cap = document.createElement("figcaption");
      fig.dataset.head = String(h); fig.dataset.id = String(D.head_ids[h]);
      cv.width = S; cv.height = S;
      cv.style.imageRendering = S < 140 ? "pixelated" : "auto";
      const ctx = cv.getContext("2d"), img = ctx.createImageData(S, S);
      pixels(img, pooled(matrix(st.l, h), S), S);
      ctx.putImageData(img, 0, 0);
      cap.textContent = "layer " + D.layer_ids[st.l] + " \u00b7 head " + D.head_ids[h] + kvTag(st.l, h);
      if (grouped(st.l)) {
        const dot = document.createElement("span");
        dot.className = "kvdot"; dot.style.background = kvColour(kvOf(st.l, h));
        cap.prepend(dot);
        fig.dataset.kv = String(kvOf(st.l, h));
      }
      fig.appendChild(cv); fig.appendChild(cap);
      fig.addEventListener("click", () => { select(st.l, h); setView("single"); });
      grid.appendChild(fig);
    }
  }
  const kv = grouped(st.l) ? String(kvOf(st.l, st.h)) : null;
  for (const fig of grid.children) {
    fig.classList.toggle("current", +fig.dataset.head === st.h);
    fig.classList.toggle("kvmate", kv !== null && fig.dataset.kv === kv && +fig.dataset.head !== st.h);
  }
}

// ---- state changes ----------------------------------------------------------------------
function redraw() {
  if (st.view === "single") drawBig(); else drawGrid();
  showGroups();
  hover(st.hover);
}
function select(l, h) {
  const layerChanged = (l | 0) !== st.l;
  st.l = Math.max(0, Math.min(L - 1, l | 0)); st.h = Math.max(0, Math.min(H - 1, h | 0));
  if (layerChanged) labelOptions();
  $("layer").value = String(st.l); $("head").value = String(st.h);
  redraw();
}
function setView(v) {
  st.view = v === "grid" ? "grid" : "single";
  $("single").hidden = st.view !== "single"; grid.hidden = st.view !== "grid";
  $("view").setAttribute("aria-pressed", st.view === "grid" ? "true" : "false");
  $("view").textContent = st.view === "grid" ? "Back to one head" : "All heads of this layer";
  redraw();
}
function find(ids, id, what) {
  const i = ids.indexOf(id);
  if (i < 0) throw new Error(what + " " + id + " is not in this page (have " + ids.join(", ") + ")");
  return i;
}

layoutBig();
labelOptions();
setView("single");
defaultInfo();
window.__hf = {
  ready: true,
  select: (layer, head) => {
    select(find(D.layer_ids, layer, "layer"), find(D.head_ids, head, "head"));
    return window.__hf.state();
  },
  hover: (i) => { hover(i == null ? -1 : i | 0); return $("info").textContent; },
  info: () => $("info").textContent,
  view: (v) => { setView(v); return st.view; },
  cell: (q, k) => { const v = cur()[q * T + k]; return { weight: v < 0 ? 0 : v, masked: v < 0 }; },
  cellRect: (q, k) => {
    const r = over.getBoundingClientRect();
    return { x: r.left + G.ml + (k + 0.5) * G.cs, y: r.top + G.mt + (q + 0.5) * G.cs, size: G.cs };
  },
  times: () => Object.assign({}, times),
  state: () => ({ layer: D.layer_ids[st.l], head: D.head_ids[st.h], view: st.view, hover: st.hover, T: T, L: L, H: H,
                  kv: kvOf(st.l, st.h), mates: mates(st.l, st.h), grouped: grouped(st.l), note: noteOf(st.l) }),
};
document.body.dataset.ready = "1";
}
})();
