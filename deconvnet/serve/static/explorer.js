// The explorer page: every action is one call of the JSON API under /api (see /docs).
// The view lives in the query string (photo or image, rule, layer, channel, unit, class, sort,
// occlusion), so a URL restores it.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { model: null, image: null, photo: null, rule: null, layer: null, channel: null, unit: null,
                cls: null, pixel: null, sort: "channel", view: null, grid: null, occlusion: null };
let lastRequest = 0;  // answers to superseded clicks are dropped

// --- the API -----------------------------------------------------------------------------------

async function api(path, options = {}) {
  const response = await fetch(path, options);
  let body;
  try { body = await response.json(); } catch (e) { body = { error: `${response.status} ${response.statusText}` }; }
  if (!response.ok) throw new Error(body.error || `${response.status}`);
  return body;
}

function say(text, error = false) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

function failed(error) { say(error.message, true); }

function withRule(path) {
  return state.rule ? `${path}?rule=${encodeURIComponent(state.rule)}` : path;
}

function imagePath() { return `/api/images/${state.image}`; }

// --- the URL -----------------------------------------------------------------------------------

function saveView() {
  const q = new URLSearchParams();
  if (state.photo) q.set("photo", state.photo); else if (state.image) q.set("image", state.image);
  if (state.rule && state.model && state.rule !== state.model.rule) q.set("rule", state.rule);
  if (state.layer) q.set("layer", state.layer);
  if (state.sort !== "channel") q.set("sort", state.sort);
  if (state.view === "class") q.set("class", state.cls);
  if (state.view === "pixel") q.set("pixel", state.pixel.join(","));
  if (state.view === "unit" && state.channel !== null) {
    q.set("channel", state.channel);
    if (state.unit) q.set("unit", state.unit.join(","));
  }
  if (state.occlusion) q.set("occlusion", state.occlusion.join(","));
  history.replaceState(null, "", q.toString() ? `?${q}` : location.pathname);
}

async function restoreView() {
  const q = new URLSearchParams(location.search);
  if (q.get("rule") && state.model.rules.includes(q.get("rule"))) setRule(q.get("rule"));
  if (q.get("sort") === "strength") { state.sort = "strength"; $("sort").value = "strength"; }
  if (q.get("layer") && state.model.layers.some((l) => l.name === q.get("layer"))) {
    state.layer = q.get("layer");
    $("layer").value = state.layer;
  }
  if (q.get("photo")) await usePhoto(q.get("photo"));
  else if (q.get("image")) await useImage(q.get("image"));
  if (!state.image) return;
  await showLayer();
  const pixel = (q.get("pixel") || "").split(",").map(Number);
  if (q.get("class") !== null && q.get("class") !== "") await showClass(Number(q.get("class")));
  else if (pixel.length === 2 && pixel.every(Number.isInteger)) await showPixel(pixel);
  else if (q.get("channel") !== null) {
    const unit = (q.get("unit") || "").split(",").map(Number);
    if (unit.length === 2 && unit.every(Number.isInteger)) await showUnit(Number(q.get("channel")), unit);
    else await showChannel(Number(q.get("channel")));
  }
  if (q.get("occlusion")) {
    const [size, stride] = q.get("occlusion").split(",").map(Number);
    if (size > 0 && stride > 0) { $("occ-size").value = size; $("occ-stride").value = stride; await runOcclusion(); }
  }
}

// --- the model and the image ---------------------------------------------------------------------

async function start() {
  state.model = await api("/api/model");
  const m = state.model;
  $("model").textContent = `${m.model} · input ${m.input.join("×")}` + (m.classes ? ` · ${m.classes} classes` : "")
    + (m.segmentation ? ` · segmentation on a ${m.segmentation.grid.join("×")} grid` : "");
  if (m.segmentation) {
    $("classes-title").textContent = "2. Classes it predicts (click one for its region, or a pixel of the image)";
    $("input").classList.add("clickable");
    $("occlusion-panel").hidden = true;  // occlusion watches a class probability: classifiers only
  }
  setRule(m.rule);
  if (m.hint) $("hint").textContent = m.hint;
  if (m.atlas) $("atlas-home").innerHTML = `<a href="${m.atlas.index}">atlas of ${escapeHtml(m.atlas.model)}</a>`;
  for (const layer of m.layers) {
    const option = document.createElement("option");
    option.value = layer.name;
    option.textContent = `${layer.name} (${layer.channels} × ${layer.shape.join("×")})`;
    $("layer").append(option);
  }
  state.layer = m.layers[Math.floor(m.layers.length / 2)].name;
  $("layer").value = state.layer;
  for (const name of m.photos) {
    const button = document.createElement("button");
    button.textContent = name;
    button.dataset.photo = name;
    button.addEventListener("click", () => usePhoto(name).then(afterNewImage).catch(failed));
    $("photos").append(button);
  }
  if (!m.photos.length) $("photos").textContent = "(no bundled photos: install scikit-image for them)";
  wire();
  await restoreView();
  if (!state.image) say("Upload an image or pick a photo.");
}

async function usePhoto(name) {
  say(`tracing ${name}…`);
  const answer = await api(`/api/photos/${encodeURIComponent(name)}`, { method: "POST" });
  state.photo = name;
  showImage(answer);
}

async function useImage(id) {
  try {
    showImage(await api(`/api/images/${encodeURIComponent(id)}`));
  } catch (error) {
    failed(error);
  }
}

async function upload(file) {
  if (!file) return;
  say(`uploading ${file.name}…`);
  const answer = await api(`/api/images?name=${encodeURIComponent(file.name.slice(0, 200))}`,
                           { method: "POST", body: file, headers: { "Content-Type": "application/octet-stream" } });
  state.photo = null;
  showImage(answer);
  await afterNewImage();
}

function showImage(answer) {
  state.image = answer.image;
  $("input").src = answer.mask || answer.input;  // a segmentation model's predicted mask over the image
  $("input").hidden = false;
  $("box").hidden = true;
  // What the decoder did (a phone photo turned upright, a 16-bit image scaled) stays beside the name.
  const notes = (answer.notes || []).map((note) => note.replace(`${answer.name} `, ""));
  $("image-name").textContent = answer.name + (notes.length ? ` (${notes.join("; ")})` : "");
  const top = $("top");
  top.innerHTML = "";
  for (const entry of answer.top) {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.dataset.class = entry.class;
    if (entry.share !== undefined) {  // a segmentation model: the class's colour in the mask, and its area
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = entry.colour;
      button.append(swatch, `${entry.label} — ${share(entry.share)} of the image`);
    } else {
      button.textContent = `${entry.label} — ${(100 * entry.probability).toFixed(1)}%`;
    }
    button.addEventListener("click", () => showClass(entry.class).catch(failed));
    item.append(button);
    top.append(item);
  }
  say(`${answer.name}: traced`);
  saveView();
}

async function afterNewImage() {
  await showLayer();
  const first = $("top").querySelector("button");
  if (first) await showClass(Number(first.dataset.class));
}

// --- classes -------------------------------------------------------------------------------------

async function showClass(c) {
  if (!state.image) return;
  const ticket = ++lastRequest;
  say(`class ${c}…`);
  const answer = await api(withRule(`${imagePath()}/classes/${c}`));
  if (ticket !== lastRequest) return;
  Object.assign(state, { view: "class", cls: c, channel: null, unit: null });
  for (const b of $("top").querySelectorAll("button")) b.setAttribute("aria-pressed", String(Number(b.dataset.class) === c));
  $("view-title").textContent = `Class ${c}: ${answer.label}`;
  picture("projection", answer.picture, `${answer.rule} reconstruction`);
  picture("patch", answer.region || null, "its predicted region");
  picture("map", null);
  $("box").hidden = true;
  $("atlas-panel").hidden = true;
  $("view-caption").textContent = answer.share !== undefined
    ? (answer.share > 0
      ? `Predicted on ${share(answer.share)} of the image. From the class's logits over that region (its colour in `
        + "the mask) down to pixels; grey is zero. Click a pixel of the image for that pixel alone."
      : "The model predicts this class nowhere in this image: its region is empty, so its map is zero.")
    : (answer.probability !== null ? `P = ${(100 * answer.probability).toFixed(2)}%. ` : "")
      + "From 1 at the class's output unit down to pixels; grey is zero.";
  say("");
  saveView();
}

function share(fraction) {
  return fraction > 0 && fraction < 0.005 ? "<1%" : `${(100 * fraction).toFixed(0)}%`;
}

async function showPixel([row, col]) {
  if (!state.image) return;
  const ticket = ++lastRequest;
  say(`pixel (${row}, ${col})…`);
  const answer = await api(withRule(`${imagePath()}/pixels/${row}/${col}`));
  if (ticket !== lastRequest) return;
  Object.assign(state, { view: "pixel", pixel: [row, col], cls: null, channel: null, unit: null });
  for (const b of $("top").querySelectorAll("button")) b.setAttribute("aria-pressed", String(Number(b.dataset.class) === answer.class));
  $("view-title").textContent = `Pixel (${row}, ${col}): ${answer.label}`;
  picture("projection", answer.picture, `${answer.rule} reconstruction`);
  picture("patch", null);
  picture("map", null);
  const [, height, width] = state.model.input;
  const r = Math.max(2, Math.round(Math.min(height, width) / 60));  // a visible mark around one pixel
  markBox([Math.max(0, row - r), Math.max(0, col - r), Math.min(height, row + r + 1), Math.min(width, col + r + 1)]);
  $("atlas-panel").hidden = true;
  $("view-caption").textContent = `The model predicts ${answer.label} here. From that class's logit at output cell `
    + `(${answer.cell.join(", ")}) alone down to pixels; grey is zero.`;
  say("");
  saveView();
}

// --- layers, channels, units -----------------------------------------------------------------------

async function showLayer() {
  if (!state.image || !state.layer) return;
  say(`${state.layer}…`);
  const grid = await api(`${imagePath()}/layers/${encodeURIComponent(state.layer)}`);
  state.grid = grid;
  const sprite = new Image();
  await new Promise((resolve, reject) => { sprite.onload = resolve; sprite.onerror = () => reject(new Error("the layer's thumbnails did not load")); sprite.src = grid.sprite; });
  const [th, tw] = grid.tile;
  const cells = [];
  for (let c = 0; c < grid.channels; c++) {
    const cell = document.createElement("button");
    cell.className = "cell";
    cell.dataset.channel = c;
    cell.dataset.value = grid.values[c];
    cell.setAttribute("role", "option");
    cell.setAttribute("aria-selected", "false");
    cell.tabIndex = -1;
    cell.title = `channel ${c}: strongest ${grid.values[c].toPrecision(4)} at (${grid.units[c].join(", ")})`;
    const canvas = document.createElement("canvas");
    canvas.width = tw;
    canvas.height = th;
    const x = (c % grid.columns) * tw, y = Math.floor(c / grid.columns) * th;
    canvas.getContext("2d").drawImage(sprite, x, y, tw, th, 0, 0, tw, th);
    const label = document.createElement("span");
    label.textContent = c;
    cell.append(canvas, label);
    cell.addEventListener("click", () => showChannel(c).catch(failed));
    cells.push(cell);
  }
  $("grid").replaceChildren(...cells);
  sortGrid();
  const first = $("grid").firstElementChild;
  if (first) first.tabIndex = 0;
  say("");
  saveView();
}

function sortGrid() {
  const cells = Array.from($("grid").children);
  const key = state.sort === "strength" ? (c) => -Number(c.dataset.value) : (c) => Number(c.dataset.channel);
  cells.sort((a, b) => key(a) - key(b) || Number(a.dataset.channel) - Number(b.dataset.channel));
  $("grid").replaceChildren(...cells);
}

function selectCell(c) {
  for (const cell of $("grid").children) {
    const on = Number(cell.dataset.channel) === c;
    cell.setAttribute("aria-selected", String(on));
    cell.tabIndex = on ? 0 : -1;
  }
}

async function showChannel(c) {
  const ticket = ++lastRequest;
  say(`${state.layer} channel ${c}…`);
  const answer = await api(withRule(`${imagePath()}/layers/${encodeURIComponent(state.layer)}/channels/${c}`));
  if (ticket !== lastRequest) return;
  showProjection(answer, true);
}

async function showUnit(c, unit) {
  const ticket = ++lastRequest;
  say(`${state.layer} channel ${c}, unit (${unit.join(", ")})…`);
  const path = `${imagePath()}/layers/${encodeURIComponent(state.layer)}/channels/${c}/units/${unit[0]}/${unit[1]}`;
  const answer = await api(withRule(path));
  if (ticket !== lastRequest) return;
  showProjection(answer, false);
}

function showProjection(answer, strongest) {
  Object.assign(state, { view: "unit", channel: answer.channel, unit: strongest ? null : answer.unit, cls: null });
  for (const b of $("top").querySelectorAll("button")) b.setAttribute("aria-pressed", "false");
  selectCell(answer.channel);
  $("view-title").textContent = `${answer.layer}, channel ${answer.channel}, unit (${answer.unit.join(", ")})`;
  const field = answer.field ? `${answer.field.join("×")} px receptive field` : "the whole image";
  picture("projection", answer.projection, `${answer.rule} projection (${field})`);
  picture("patch", answer.patch, "what the unit saw");
  picture("map", answer.map, "the channel's map: click a position");
  markBox(answer.box);
  $("view-caption").textContent = answer.value > 0
    ? `${strongest ? "The channel's strongest unit" : "This unit"}: activation ${answer.value.toPrecision(4)}, kept alone `
      + "and projected down; grey is zero. The box on the image is its receptive field."
    : `${strongest ? "This channel is silent on this image" : "This unit is silent"} (activation `
      + `${answer.value.toPrecision(4)}): there is nothing to project. Sort by strength for the channels that fire.`;
  say("");
  saveView();
  showAtlas(answer.layer, answer.channel);
}

function markBox(box) {
  const [top, left, bottom, right] = box;
  const [, height, width] = state.model.input;
  const b = $("box");
  Object.assign(b.style, { top: `${100 * top / height}%`, left: `${100 * left / width}%`,
                           height: `${100 * (bottom - top) / height}%`, width: `${100 * (right - left) / width}%` });
  b.hidden = false;
}

async function showAtlas(layer, channel) {
  const m = state.model;
  if (!m.atlas || !m.atlas.layers.includes(layer)) { $("atlas-panel").hidden = true; return; }
  const answer = await api(`/api/atlas/${encodeURIComponent(layer)}/${channel}`);
  $("atlas-link").href = answer.page;
  $("atlas-link").textContent = `${layer} channel ${channel}'s page`;
  $("atlas-units").innerHTML = answer.units.map((u) =>
    `<div class="atlas-unit"><a href="${answer.page}"><img src="${u.projection}" alt="atlas projection ${u.rank + 1}">`
    + `<img src="${u.patch}" alt="atlas patch ${u.rank + 1}"></a><div>${u.rank + 1}. ${u.value.toPrecision(4)}<br>`
    + `${escapeHtml(u.image)}</div></div>`).join("") || "<p>No image of the atlas's dataset gave this channel a unit.</p>";
  $("atlas-panel").hidden = false;
}

function picture(id, src, caption = "") {
  const img = $(id);
  if (src) { img.src = src; img.hidden = false; } else { img.removeAttribute("src"); img.hidden = true; }
  const label = $(`${id}-caption`);
  if (label) label.textContent = src ? caption : "";
}

// --- occlusion -------------------------------------------------------------------------------------

async function runOcclusion() {
  if (!state.image) { say("Upload an image or pick a photo first.", true); return; }
  const size = Number($("occ-size").value), stride = Number($("occ-stride").value);
  const body = { size, stride, layer: state.layer };
  let job = await api(`${imagePath()}/occlusion`, { method: "POST", headers: { "Content-Type": "application/json" },
                                                   body: JSON.stringify(body) });
  state.occlusion = [size, stride];
  saveView();
  const bar = $("occ-progress");
  bar.hidden = false;
  while (job.state === "queued" || job.state === "running") {
    bar.max = job.total;
    bar.value = job.done;
    say(`occlusion: ${job.done} of ${job.total} positions`);
    await new Promise((r) => setTimeout(r, 250));
    job = await api(`/api/jobs/${job.job}`);
  }
  bar.hidden = true;
  if (job.state === "failed") throw new Error(`occlusion failed: ${job.error}`);
  drawOcclusion(job.result);
  say("");
}

function drawOcclusion(r) {
  state.occlusionResult = r;
  // The map's sum can be negative (a residual sum, a conv before its rectifier): its range, dark to bright.
  const low = Math.min(...r.activation.flat()), span = Math.max(...r.activation.flat()) - low || 1;
  grid("occ-activation", r.activation, (v) => colour((v - low) / span));
  grid("occ-probability", r.probability, (v) => colour(v));
  grid("occ-label", r.label, (v) => (v === r.target ? [60, 200, 90] : hashColour(v)));
  $("occ-projection").src = r.projection;
  $("occ-activation-caption").textContent = `${r.layer} channel ${r.channel}: its total activation (dark: lowest)`;
  $("occ-probability-caption").textContent = `P(${r.target_label}), ${(100 * r.unoccluded).toFixed(1)}% unoccluded`;
  $("occ-label-caption").textContent = `most probable class (green: ${r.target_label}; hover for the others)`;
  $("occ-result").hidden = false;
}

function grid(id, values, rgb) {
  const canvas = $(id);
  const rows = values.length, cols = values[0].length;
  canvas.width = cols;
  canvas.height = rows;
  const context = canvas.getContext("2d");
  const pixels = context.createImageData(cols, rows);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) {
    const [red, green, blue] = rgb(values[i][j]);
    pixels.data.set([red, green, blue, 255], 4 * (i * cols + j));
  }
  context.putImageData(pixels, 0, 0);
  canvas.onmousemove = (event) => hover(event, canvas, rows, cols);
  canvas.onmouseleave = () => { $("box").hidden = true; };
}

function hover(event, canvas, rows, cols) {
  const r = state.occlusionResult;
  const rect = canvas.getBoundingClientRect();
  const i = Math.min(rows - 1, Math.floor((event.clientY - rect.top) / rect.height * rows));
  const j = Math.min(cols - 1, Math.floor((event.clientX - rect.left) / rect.width * cols));
  const top = i * r.stride, left = j * r.stride;
  markBox([top, left, top + r.size, left + r.size]);
  $("occ-readout").textContent = `occluder at (${top}, ${left}): P(${r.target_label}) = ${(100 * r.probability[i][j]).toFixed(2)}%, `
    + `most probable: ${r.labels[r.label[i][j]]}, ${r.layer} channel ${r.channel}: ${r.activation[i][j].toPrecision(4)}`;
}

// A dark-to-bright colour map (the same anchors as deconvnet.pictures.image.colormap).
const ANCHORS = [[0, 0, 0.02], [0.34, 0.06, 0.43], [0.73, 0.21, 0.33], [0.98, 0.55, 0.04], [0.99, 1, 0.64]];
function colour(v) {
  const p = Math.min(1, Math.max(0, v)) * (ANCHORS.length - 1);
  const low = Math.min(Math.floor(p), ANCHORS.length - 2), w = p - low;
  return ANCHORS[low].map((a, k) => Math.round(255 * (a * (1 - w) + ANCHORS[low + 1][k] * w)));
}

function hashColour(v) {
  const h = (v * 2654435761) % 360;
  const c = 0.45, x = c * (1 - Math.abs(((h / 60) % 2) - 1)), m = 0.35;
  const [r, g, b] = h < 60 ? [c, x, 0] : h < 120 ? [x, c, 0] : h < 180 ? [0, c, x] : h < 240 ? [0, x, c] : h < 300 ? [x, 0, c] : [c, 0, x];
  return [r, g, b].map((t) => Math.round(255 * (t + m)));
}

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (ch) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[ch]));
}

// --- controls ----------------------------------------------------------------------------------------

function setRule(rule) {
  state.rule = rule;
  $("hint").hidden = !(state.model && state.model.hint && rule === "deconvnet");  // the hint is about this rule
  for (const input of document.querySelectorAll("input[name=rule]")) input.checked = input.value === rule;
}

function rerun() {
  if (state.view === "pixel") return showPixel(state.pixel);
  if (state.view === "class") return showClass(state.cls);
  if (state.view === "unit" && state.unit) return showUnit(state.channel, state.unit);
  if (state.view === "unit") return showChannel(state.channel);
  saveView();
  return Promise.resolve();
}

function moveSelection(event) {
  const cells = Array.from($("grid").children);
  if (!cells.length) return;
  let index = cells.findIndex((c) => c.getAttribute("aria-selected") === "true");
  const perRow = Math.max(1, cells.filter((c) => c.offsetTop === cells[0].offsetTop).length);
  const steps = { ArrowRight: 1, ArrowLeft: -1, ArrowDown: perRow, ArrowUp: -perRow };
  if (!(event.key in steps)) return;
  event.preventDefault();
  index = index < 0 ? 0 : Math.min(cells.length - 1, Math.max(0, index + steps[event.key]));
  cells[index].focus();
  showChannel(Number(cells[index].dataset.channel)).catch(failed);
}

function wire() {
  for (const input of document.querySelectorAll("input[name=rule]")) {
    input.addEventListener("change", () => { setRule(input.value); rerun().catch(failed); });
  }
  $("layer").addEventListener("change", () => {
    state.layer = $("layer").value;
    if (state.view === "unit") Object.assign(state, { view: null, channel: null, unit: null });
    showLayer().catch(failed);
  });
  $("sort").addEventListener("change", () => { state.sort = $("sort").value; sortGrid(); saveView(); });
  $("grid").addEventListener("keydown", moveSelection);
  $("map").addEventListener("click", (event) => {
    const g = state.grid;
    const rect = $("map").getBoundingClientRect();
    const [h, w] = g.shape;
    const side = Math.min(rect.width / w, rect.height / h);  // object-fit: contain
    const x = event.clientX - rect.left - (rect.width - side * w) / 2;
    const y = event.clientY - rect.top - (rect.height - side * h) / 2;
    const row = Math.floor(y / side), col = Math.floor(x / side);
    if (row < 0 || col < 0 || row >= h || col >= w) return;
    showUnit(state.channel, [row, col]).catch(failed);
  });
  $("input").addEventListener("click", (event) => {
    if (!state.model.segmentation) return;
    const rect = $("input").getBoundingClientRect();
    const [, h, w] = state.model.input;
    const row = Math.floor((event.clientY - rect.top) / rect.height * h);
    const col = Math.floor((event.clientX - rect.left) / rect.width * w);
    if (row < 0 || col < 0 || row >= h || col >= w) return;
    showPixel([row, col]).catch(failed);
  });
  $("file").addEventListener("change", () => upload($("file").files[0]).catch(failed));
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    upload(event.dataTransfer.files[0]).catch(failed);
  });
  drop.addEventListener("keydown", (event) => { if (event.key === "Enter" || event.key === " ") $("file").click(); });
  $("class-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const c = Number($("class-input").value);
    if ($("class-input").value !== "" && Number.isInteger(c)) showClass(c).catch(failed);
  });
  $("occlusion-form").addEventListener("submit", (event) => { event.preventDefault(); runOcclusion().catch(failed); });
}

start().catch(failed);
