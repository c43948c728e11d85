// cxrdask page: upload one X-ray, show the head's probabilities of its findings as sorted bars and a Grad-CAM overlay.
"use strict";

const $ = (id) => document.getElementById(id);
let current = null; // the last /api/predict answer

function setError(message) {
  $("error").hidden = !message;
  $("error").textContent = message || "";
}

// A perceptual blue-to-yellow-to-red ramp; transparent where the map is near zero.
function colour(v) {
  const stops = [[0, [49, 54, 149]], [0.35, [116, 173, 209]], [0.6, [254, 224, 144]],
                 [0.8, [244, 109, 67]], [1, [165, 0, 38]]];
  let i = 1;
  while (i < stops.length - 1 && v > stops[i][0]) i++;
  const [a, ca] = stops[i - 1], [b, cb] = stops[i];
  const t = Math.min(1, Math.max(0, (v - a) / (b - a)));
  return ca.map((c, k) => Math.round(c + t * (cb[k] - c)));
}

function drawHeatmap(label) {
  const canvas = $("heatmap"), img = $("xray");
  if (!current || !current.heatmaps) return;
  const map = current.heatmaps.maps[label];
  const h = map.length, w = map[0].length;
  const small = document.createElement("canvas");
  small.width = w; small.height = h;
  const cells = small.getContext("2d").createImageData(w, h);
  map.forEach((row, y) => row.forEach((v, x) => {
    const [r, g, b] = colour(v);
    cells.data.set([r, g, b, Math.round(255 * Math.min(1, v * 1.4))], 4 * (y * w + x));
  }));
  small.getContext("2d").putImageData(cells, 0, 0);
  canvas.width = img.naturalWidth || img.width;
  canvas.height = img.naturalHeight || img.height;
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.imageSmoothingEnabled = true; // bilinear upsampling of the coarse map
  ctx.drawImage(small, 0, 0, canvas.width, canvas.height);
  canvas.style.opacity = $("opacity").value / 100;
  canvas.dataset.label = label;
  canvas.dataset.drawn = "true";
  $("heatmap-label").textContent = label.replaceAll("_", " ");
  document.querySelectorAll(".bar").forEach((bar) =>
    bar.classList.toggle("selected", bar.dataset.label === label));
}

function showBars(answer) {
  const list = $("bars");
  list.replaceChildren();
  for (const { label, probability } of answer.ranking) {
    const item = document.createElement("li");
    item.className = "bar";
    item.dataset.label = label;
    item.dataset.probability = probability;
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = label.replaceAll("_", " ");
    const track = document.createElement("span");
    track.className = "track";
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.display = "block";
    fill.style.width = `${(100 * probability).toFixed(1)}%`;
    track.append(fill);
    const value = document.createElement("span");
    value.className = "value";
    value.textContent = `${(100 * probability).toFixed(1)}%`;
    item.append(name, track, value);
    item.addEventListener("click", () => drawHeatmap(label));
    list.append(item);
  }
  const m = answer.model;
  $("model").textContent = `Backbone ${m.backbone.name} (${m.backbone.weights}), head ${m.head.file} ` +
    `(epoch ${m.head.epoch}), ${m.device}; ${answer.timing_ms.total} ms.`;
}

function showSimilar(answer) {
  const similar = answer.similar;
  $("similar").hidden = !similar;
  if (!similar) return;
  $("similar-store").textContent = similar.store;
  $("similar-note").textContent = similar.query_in_store === null
    ? "The stored images most like this one (centred cosine similarity of the backbone's features)."
    : `This image is itself in the store (row ${similar.query_in_store}): it comes first.`;
  const list = $("cases");
  list.replaceChildren();
  for (const c of similar.cases) {
    const item = document.createElement("li");
    item.className = "case";
    const img = document.createElement("img");
    img.src = c.picture;
    img.alt = `stored image ${c.image}`;
    const labels = document.createElement("div");
    labels.className = "labels";
    labels.textContent = c.findings.replaceAll("|", ", ").replaceAll("_", " ");
    const meta = document.createElement("div");
    meta.className = "meta";
    meta.textContent = `${c.image}, ${c.split}, similarity ${c.similarity.toFixed(3)}`;
    item.append(img, labels, meta);
    list.append(item);
  }
}

async function upload(file) {
  setError("");
  $("status").textContent = `Analysing ${file.name}…`;
  const form = new FormData();
  form.append("file", file, file.name);
  for (const field of ["age", "sex", "view"]) {
    if ($(field).value) form.append(field, $(field).value);
  }
  let answer;
  try {
    const response = await fetch("/api/predict?heatmaps=true", { method: "POST", body: form });
    answer = await response.json();
    if (!response.ok) {
      const detail = typeof answer.detail === "string" ? answer.detail : JSON.stringify(answer.detail);
      throw new Error(detail);
    }
  } catch (err) {
    $("status").textContent = "";
    setError(err.message);
    return;
  }
  current = answer;
  $("result").hidden = false;
  $("heatmap").dataset.drawn = "false";
  showBars(answer);
  showSimilar(answer);
  const img = $("xray");
  img.onload = () => drawHeatmap(answer.ranking[0].label);
  img.onerror = () => drawHeatmap(answer.ranking[0].label); // e.g. a format the browser can't show
  if (img.src) URL.revokeObjectURL(img.src);
  img.src = URL.createObjectURL(file);
  $("status").textContent = `${file.name}: ${answer.image.width}×${answer.image.height}` +
    (answer.image.conversion ? ` (${answer.image.conversion})` : "");
}

$("file").addEventListener("change", (event) => {
  if (event.target.files.length) upload(event.target.files[0]);
});
const zone = $("dropzone");
zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
zone.addEventListener("dragleave", () => zone.classList.remove("over"));
zone.addEventListener("drop", (event) => {
  event.preventDefault();
  zone.classList.remove("over");
  if (event.dataTransfer.files.length) upload(event.dataTransfer.files[0]);
});
$("opacity").addEventListener("input", () => { $("heatmap").style.opacity = $("opacity").value / 100; });
