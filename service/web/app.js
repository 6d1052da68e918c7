// The demo page: GET /v1/models for what is served, POST /v1/classify for the chosen image.
// Plain DOM, no framework, no build step; every text from the server goes in via textContent.
"use strict";

const $ = (id) => document.getElementById(id);
const TOP_K = 5;

function setStatus(status) {
  document.body.dataset.status = status; // idle | busy | done | error (tests wait on it)
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
  setStatus("error");
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    if (body && body.error) return `${response.status} ${body.error.code}: ${body.error.message}`;
  } catch (_) { /* not JSON */ }
  return `${response.status} ${response.statusText}`;
}

function showRandomWarning(details) {
  $("random-warning-detail").textContent = details.join(" ");
  $("random-warning").hidden = false;
}

async function loadModel() {
  let response;
  try {
    response = await fetch("/v1/models", { headers: { Accept: "application/json" } });
  } catch (err) {
    $("model-state").textContent = "unreachable";
    return;
  }
  if (!response.ok) {
    $("model-state").textContent = await errorMessage(response);
    return;
  }
  const model = (await response.json()).models[0];
  $("model-name").textContent = model.name;
  $("model-arch").textContent = model.architecture !== model.name ? model.architecture : "";
  $("model-weights").textContent = model.weights;
  $("model-state").textContent = model.state;
  document.body.dataset.model = model.state;
  if (model.random_weights) showRandomWarning(model.warnings);
  if (model.state !== "ready" && model.state !== "failed") setTimeout(loadModel, 1000);
}

function renderPredictions(predictions) {
  const list = $("predictions");
  list.replaceChildren();
  for (const p of predictions) {
    const item = document.createElement("li");
    item.dataset.classId = String(p.class_id);
    item.dataset.score = String(p.score);
    const row = document.createElement("div");
    row.className = "row";
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = p.label;
    label.title = `${p.label} (class ${p.class_id})`;
    const pct = document.createElement("span");
    pct.className = "pct";
    pct.textContent = `${(100 * p.score).toFixed(1)}%`;
    row.append(label, pct);
    const track = document.createElement("div");
    track.className = "track";
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.style.width = `${Math.max(0, Math.min(100, 100 * p.score)).toFixed(2)}%`;
    track.append(bar);
    item.append(row, track);
    list.append(item);
  }
}

async function classify(file) {
  $("error").hidden = true;
  setStatus("busy");
  const preview = $("preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  $("file-name").textContent = `${file.name} · ${(file.size / 1024).toFixed(0)} KB`;
  $("predictions").replaceChildren();
  $("latency").textContent = "classifying…";
  $("timing").textContent = "";
  $("result").hidden = false;

  const started = performance.now();
  let response;
  try {
    response = await fetch(`/v1/classify?top_k=${TOP_K}`, {
      method: "POST",
      headers: { "Content-Type": file.type || "application/octet-stream" },
      body: file,
    });
  } catch (err) {
    $("latency").textContent = "";
    showError(`request failed: ${err}`);
    return;
  }
  const elapsed = performance.now() - started;
  if (!response.ok) {
    $("latency").textContent = "";
    showError(await errorMessage(response));
    return;
  }
  const answer = await response.json();
  renderPredictions(answer.predictions[0]);
  const t = answer.timing;
  $("latency").textContent = `${elapsed.toFixed(0)} ms round trip`;
  $("latency").dataset.ms = elapsed.toFixed(1);
  $("timing").textContent =
    `server ${t.total_ms.toFixed(1)} ms: preprocess ${t.preprocess_ms.toFixed(1)}, ` +
    `queue ${t.queue_ms.toFixed(1)}, inference ${t.inference_ms.toFixed(1)} ms ` +
    `(batch of ${t.batch_sizes.join(", ")})`;
  if (answer.warnings.length) showRandomWarning(answer.warnings);
  setStatus("done");
}

function pick(files) {
  if (files && files.length) classify(files[0]);
}

function init() {
  setStatus("idle");
  const drop = $("drop");
  $("file").addEventListener("change", (e) => pick(e.target.files));
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    pick(e.dataTransfer && e.dataTransfer.files);
  });
  loadModel();
}

document.addEventListener("DOMContentLoaded", init);
