// The results page: lists the models that can score anomalies, sends each dropped image to
// POST /models/{name}/anomaly and shows its score, percentile, flag and heatmap.
"use strict";

// With VAE_API_TOKEN set, the session cookie stands in for the token only alongside this header,
// which a page on another site cannot send here (service/http/auth.py).
const HEADERS = { "X-VAE-UI": "1" };
// Anomaly scores are estimates from random samples (IWAE's importance samples), so the page asks
// with a fixed seed: an image gets the same score on every upload, the one that
// POST /models/{name}/anomaly gives it with "seed": 0.
const SEED = 0;
const PARALLEL = 4;  // requests in flight at once; the server batches concurrent ones into one pass

const $ = (selector, root = document) => root.querySelector(selector);

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...HEADERS, ...options.headers } });
  const body = await response.json().catch(() => ({}));
  if (response.status === 401) {
    throw new Error("Not signed in, or the session has ended: reload the page to sign in.");
  }
  if (!response.ok) {
    throw new Error(body.error || `${response.status} ${response.statusText}`);
  }
  return body;
}

function status(text) {
  $("#status").textContent = text;
}

async function loadModels() {
  const select = $("#model");
  try {
    const { models } = await api("models");
    const usable = models.filter((m) => m.ready && m.operations.includes("anomaly"));
    select.replaceChildren(...usable.map((m) => new Option(`${m.name} (${m.kind})`, m.name)));
    if (usable.length === 0) {
      select.append(new Option("no ready model scores anomalies"));
      return;
    }
    select.disabled = false;
    $("#files").disabled = false;
    await describe(select.value);
  } catch (error) {
    select.replaceChildren(new Option("unavailable"));
    status(error.message);
  }
}

async function describe(name) {
  const info = $("#model-info");
  info.textContent = "";
  try {
    const model = await api(`models/${encodeURIComponent(name)}`);
    const parts = [];
    if (model.anomaly) parts.push(`score ${model.anomaly.default}`);
    if (model.input_shape) parts.push(`input ${model.input_shape.join("×")} (uploads are converted to it)`);
    info.textContent = parts.join(" · ");
  } catch (error) {
    info.textContent = error.message;
  }
}

function percent(share) {
  return `${+(share * 100).toFixed(2)} %`;
}

function readAsDataUrl(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(new Error(`could not read ${file.name}`));
    reader.readAsDataURL(file);
  });
}

async function score(model, file, item) {
  const dataUrl = await readAsDataUrl(file);
  $(".input", item).src = dataUrl;
  const body = await api(`models/${encodeURIComponent(model)}/anomaly`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ images_png: [dataUrl.slice(dataUrl.indexOf(",") + 1)], seed: SEED,
                           maps: true, map_format: "png" }),
  });
  const value = body.scores[0];
  const scoreEl = $(".score", item);
  scoreEl.value = String(value);
  scoreEl.textContent = value.toFixed(2);
  $(".score-name", item).textContent = `(${body.score})`;
  const pct = $(".percentile", item);
  pct.value = String(body.percentiles[0]);
  pct.textContent = `${body.percentiles[0].toFixed(1)} %`;
  const anomalous = body.is_anomaly[0];
  const flag = $(".flag", item);
  flag.classList.add(anomalous ? "anomalous" : "normal");
  const chosen = body.threshold_source === "f1" ? "the threshold with the best F1" : "the calibrated threshold";
  flag.textContent = `${anomalous ? "anomalous" : "normal"}: ${anomalous ? "above" : "not above"} ${chosen}, ` +
    `${body.threshold.toFixed(2)}, which flags ${percent(body.false_positive_rate)} of normal images`;
  $("dl", item).hidden = false;
  if (body.maps_png) {
    const map = $(".heatmap", item);
    map.src = `data:image/png;base64,${body.maps_png[0]}`;
    map.alt = `heatmap of ${file.name}: where the model finds it anomalous`;
    $(".map", item).hidden = false;
  }
  if (body.preprocessing) {
    const notes = $(".notes", item);
    notes.textContent = body.preprocessing.map((note) => note.replace(/^images_png\[0\]: /, "")).join("; ");
    notes.hidden = false;
  }
}

async function scoreAll(files) {
  const model = $("#model").value;
  const results = $("#results");
  const batch = document.createDocumentFragment();
  const jobs = [...files].map((file) => {
    const item = $("#result").content.firstElementChild.cloneNode(true);
    $(".name", item).textContent = file.name;
    const input = $(".input", item);
    input.alt = `input: ${file.name}`;
    input.addEventListener("error", () => { input.closest("figure").hidden = true; });  // not an image we can show
    batch.append(item);
    return { file, item };
  });
  results.prepend(batch);  // the newest upload first, its images in the order chosen
  let done = 0;
  let failed = 0;
  status(`Scoring ${jobs.length} image${jobs.length === 1 ? "" : "s"} with ${model}…`);
  const queue = jobs.slice();
  async function worker() {
    for (let job = queue.shift(); job; job = queue.shift()) {
      job.item.setAttribute("aria-busy", "true");
      try {
        await score(model, job.file, job.item);
      } catch (error) {
        failed += 1;
        const message = $(".error", job.item);
        message.textContent = error.message;
        message.hidden = false;
      }
      job.item.removeAttribute("aria-busy");
      done += 1;
    }
  }
  await Promise.all(Array.from({ length: Math.min(PARALLEL, jobs.length) }, worker));
  status(`Scored ${done - failed} of ${done} image${done === 1 ? "" : "s"} with ${model}` +
    (failed ? `; ${failed} failed (see below).` : "."));
}

function setUp() {
  const drop = $("#drop");
  const input = $("#files");
  $("#model").addEventListener("change", (event) => describe(event.target.value));
  input.addEventListener("change", () => {
    if (input.files.length) scoreAll(input.files);
    input.value = "";  // choosing the same file again scores it again
  });
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    if (!input.disabled && event.dataTransfer.files.length) scoreAll(event.dataTransfer.files);
  });
  $("#sign-out").addEventListener("click", async () => {
    await fetch("ui/session", { method: "DELETE", headers: HEADERS });
    location.reload();
  });
  loadModels();
}

setUp();
