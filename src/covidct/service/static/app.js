/* covidct viewer page: plain JavaScript, no libraries, talks to the REST API of the same server. */
"use strict";

const $ = (id) => document.getElementById(id);
const STAGE_NAMES = { unpack: "Unpack", load: "Read CT", lungs: "Lungs", lesions: "Lesions", severity: "Severity", outputs: "Reports" };
const DX_NAMES = { covid19: "COVID-19", pneumonia: "Other pneumonia", normal: "Normal" };
// the heatmap legend as the page writes it (the models drew the lesions); replaced where the HU rule drew them
const HEAT_LEGEND = $("heat-legend-text").textContent;

// --- access token: ?token=... in the page's URL, kept for this tab only -------------------------------
const params = new URLSearchParams(location.search);
if (params.get("token")) sessionStorage.setItem("covidct-token", params.get("token"));
const TOKEN = sessionStorage.getItem("covidct-token");

function withToken(url) {
  if (!TOKEN) return url;
  return url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(TOKEN);
}

async function api(path, opts = {}) {
  const headers = Object.assign({}, opts.headers || {});
  if (TOKEN) headers["Authorization"] = "Bearer " + TOKEN;
  const resp = await fetch(path, Object.assign({}, opts, { headers }));
  let body = null;
  try { body = await resp.json(); } catch (e) { body = null; }
  if (!resp.ok) {
    let msg = body && body.detail ? body.detail : resp.statusText;
    if (Array.isArray(msg)) msg = msg.map((d) => d.msg).join("; ");
    throw new Error(msg + " (HTTP " + resp.status + ")");
  }
  return body;
}

// --- state ------------------------------------------------------------------------------------------
const S = {
  job: null, vol: null, report: null, slice: 0, window: "lung",
  showLungs: true, showLesions: true, showHeatmap: false, opacity: 0.55,
  edit: false, negative: false, clicks: [], clickBase: null, clickSlice: null, busy: false,
  images: new Map(), pollTimer: null,
};

// --- the list of this browser's jobs (ids are secrets: never listed by the server) ----------------------
function myJobs() {
  try { return JSON.parse(localStorage.getItem("covidct-jobs") || "[]"); } catch (e) { return []; }
}
function rememberJob(job) {
  const list = myJobs().filter((j) => j.id !== job.id);
  list.unshift({ id: job.id, filename: job.filename, status: job.status, created: job.created });
  localStorage.setItem("covidct-jobs", JSON.stringify(list.slice(0, 30)));
  renderJobList();
}
function renderJobList() {
  const ul = $("jobs");
  const list = myJobs();
  ul.innerHTML = "";
  if (!list.length) { ul.innerHTML = '<li class="empty">None yet on this browser.</li>'; return; }
  for (const j of list) {
    const li = document.createElement("li");
    li.dataset.id = j.id;
    if (S.job && S.job.id === j.id) li.className = "current";
    const n = document.createElement("span"); n.className = "n"; n.textContent = j.filename || j.id;
    const s = document.createElement("span"); s.className = "s"; s.textContent = j.status;
    li.append(n, s);
    li.addEventListener("click", () => { location.hash = "job=" + j.id; });
    ul.append(li);
  }
}

// --- upload -------------------------------------------------------------------------------------------
function upload(files) {
  if (!files || !files.length) return;
  const fd = new FormData();
  for (const f of files) fd.append("file", f, f.name);
  const xhr = new XMLHttpRequest();
  xhr.open("POST", "/api/jobs");
  if (TOKEN) xhr.setRequestHeader("Authorization", "Bearer " + TOKEN);
  $("upload").hidden = false; $("upload-error").hidden = true;
  const total = Array.from(files).reduce((a, f) => a + f.size, 0);
  $("upload-text").textContent = "Uploading " + (files.length > 1 ? files.length + " files" : files[0].name) + " (" + fmtBytes(total) + ")…";
  xhr.upload.onprogress = (e) => {
    if (e.lengthComputable) {
      const p = (100 * e.loaded) / e.total;
      $("upload-fill").style.width = p.toFixed(1) + "%";
      $("upload-text").textContent = "Uploading… " + p.toFixed(0) + " % of " + fmtBytes(e.total);
    }
  };
  xhr.onload = () => {
    let body = null;
    try { body = JSON.parse(xhr.responseText); } catch (e) { body = null; }
    if (xhr.status === 201) {
      $("upload-fill").style.width = "100%";
      $("upload-text").textContent = "Uploaded.";
      setTimeout(() => { $("upload").hidden = true; $("upload-fill").style.width = "0"; }, 1500);
      rememberJob(body);
      location.hash = "job=" + body.id;
    } else {
      $("upload").hidden = true;
      showError("upload-error", (body && body.detail ? body.detail : xhr.statusText) + " (HTTP " + xhr.status + ")");
    }
  };
  xhr.onerror = () => { $("upload").hidden = true; showError("upload-error", "upload failed: the server could not be reached"); };
  xhr.send(fd);
}

function fmtBytes(n) {
  if (n > 1 << 30) return (n / (1 << 30)).toFixed(2) + " GB";
  if (n > 1 << 20) return (n / (1 << 20)).toFixed(1) + " MB";
  return Math.max(1, Math.round(n / 1024)) + " kB";
}
function showError(id, msg) { const e = $(id); e.textContent = msg; e.hidden = false; }

// --- a job: progress, then the viewer ------------------------------------------------------------------
async function openJob(id) {
  clearTimeout(S.pollTimer);
  S.job = null; S.vol = null; S.images.clear(); resetClicks();
  $("intro").hidden = true; $("viewer-card").hidden = true; $("report").hidden = true;
  await pollJob(id);
}

async function pollJob(id) {
  let job;
  try { job = await api("/api/jobs/" + id); } catch (e) {
    $("progress").hidden = false; $("stages").innerHTML = "";
    $("progress-title").textContent = "This analysis cannot be opened";
    showError("job-error", e.message);
    return;
  }
  S.job = job;
  document.body.dataset.jobStatus = job.status;
  $("jobhead").hidden = false;
  $("job-name").textContent = job.filename || job.id;
  const badge = $("job-status");
  badge.textContent = job.status === "running" ? "running · " + (STAGE_NAMES[job.stage] || job.stage || "") : job.status;
  badge.className = "badge " + job.status;
  rememberJob(job);
  if (job.status === "queued" || job.status === "running" || job.status === "failed") {
    renderProgress(job);
    if (job.status !== "failed") S.pollTimer = setTimeout(() => pollJob(id), 500);
    return;
  }
  $("progress").hidden = true;
  await loadViewer(job);
}

function renderProgress(job) {
  $("progress").hidden = false;
  $("progress-title").textContent = job.status === "queued" ? "Waiting for a free worker…"
    : job.status === "failed" ? "The analysis failed" : "Analysing…";
  const ol = $("stages");
  ol.innerHTML = "";
  const stages = (job.stages || Object.keys(STAGE_NAMES)).filter((s) => s !== "unpack" || job.input_kind === "zip");
  const cur = stages.indexOf(job.stage);
  stages.forEach((s, i) => {
    const li = document.createElement("li");
    li.textContent = STAGE_NAMES[s] || s;
    if (job.status === "running" && i < cur) li.className = "done";
    if (job.status === "running" && i === cur) li.className = "active";
    ol.append(li);
  });
  if (job.status === "failed") showError("job-error", job.error || "unknown error"); else $("job-error").hidden = true;
}

async function loadViewer(job) {
  const vol = await api("/api/jobs/" + job.id + "/volume");
  S.vol = vol;
  S.report = vol.report;
  const [nz, ny, nx] = vol.shape_zyx;
  const canvas = $("canvas");
  canvas.width = nx; canvas.height = ny;
  // pixels are not square in general: the CSS size keeps the patient's proportions
  const [, sy, sx] = vol.spacing_mm;
  canvas.dataset.aspect = String((ny * sy) / (nx * sx));
  $("slice").max = String(nz - 1);
  $("btn-lung").disabled = $("btn-medi").disabled = !vol.is_hu;
  $("tog-heat").disabled = !vol.heatmap; // no lesion model ran: no probabilities to show
  // where the HU rule drew the lesions the heatmap is the lesion model's own view: the button and legend say so
  $("tog-heat").title = !vol.heatmap ? "No lesion probabilities for this analysis"
    : vol.heatmap_note ? "Lesion model's probability, not the drawn lesions (H)" : "Lesion probability of the models (H)";
  $("heat-legend-text").textContent = vol.heatmap_note
    ? "lesion model's probability 0 → 1, not the drawn lesions (the HU rule drew them; the model marks vessels too)"
    : HEAT_LEGEND;
  $("heat-legend").title = vol.heatmap_note || "";
  $("viewer-card").hidden = false; $("report").hidden = false;
  sizeCanvas();
  const worst = worstSlices(5);
  setSlice(worst.length ? worst[0] : Math.floor(nz / 2));
  renderReport(S.report);
  renderPlot();
}

function sizeCanvas() {
  const c = $("canvas");
  const wrap = $("viewer");
  const aspect = parseFloat(c.dataset.aspect || "1");
  const maxW = wrap.clientWidth || 512;
  const maxH = Math.min(window.innerHeight - 330, 720);
  let w = maxW, h = w * aspect;
  if (h > maxH) { h = Math.max(maxH, 260); w = h / aspect; }
  c.style.width = Math.round(w) + "px"; c.style.height = Math.round(h) + "px";
}

// --- images ---------------------------------------------------------------------------------------------
function loadImage(url) {
  if (S.images.has(url)) return S.images.get(url);
  const p = new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("could not load " + url));
    img.src = withToken(url);
  });
  S.images.set(url, p);
  if (S.images.size > 600) S.images.delete(S.images.keys().next().value);
  return p;
}
function sliceUrl(k) { return "/api/jobs/" + S.job.id + "/slices/" + k + ".png?window=" + S.window; }
function overlayUrl(k, layer) { return "/api/jobs/" + S.job.id + "/slices/" + k + "/" + layer + ".png?revision=" + S.vol.revision; }

let drawSeq = 0;
async function draw() {
  if (!S.vol) return;
  const seq = ++drawSeq;
  const k = S.slice;
  const viewer = $("viewer");
  viewer.dataset.state = "loading";
  try {
    const heat = S.showHeatmap && S.vol.heatmap;
    const [ct, lungs, lesions, heatmap] = await Promise.all([
      loadImage(sliceUrl(k)), loadImage(overlayUrl(k, "lungs")), loadImage(overlayUrl(k, "lesions")),
      heat ? loadImage(overlayUrl(k, "heatmap")) : null,
    ]);
    if (seq !== drawSeq) return; // a newer slice was asked for meanwhile
    const c = $("canvas");
    const g = c.getContext("2d");
    g.globalAlpha = 1; g.clearRect(0, 0, c.width, c.height); g.drawImage(ct, 0, 0);
    if (S.showLungs) { g.globalAlpha = Math.min(1, S.opacity + 0.25); g.drawImage(lungs, 0, 0); }
    if (S.showLesions) { g.globalAlpha = S.opacity; g.drawImage(lesions, 0, 0); }
    if (heatmap) { g.globalAlpha = Math.min(1, S.opacity + 0.3); g.drawImage(heatmap, 0, 0); } // its alpha grows with p
    g.globalAlpha = 1;
    drawClicks(g);
    viewer.dataset.slice = String(k);
    viewer.dataset.revision = String(S.vol.revision);
    viewer.dataset.window = S.window;
    viewer.dataset.showLungs = String(S.showLungs);
    viewer.dataset.showLesions = String(S.showLesions);
    viewer.dataset.showHeatmap = String(Boolean(heatmap));
    viewer.dataset.lesionPx = String(countOpaque(lesions));
    viewer.dataset.state = "ready";
  } catch (e) {
    viewer.dataset.state = "error";
  }
  prefetch(k);
}

function countOpaque(img) {
  // what the lesion overlay actually shows on this slice, counted from its pixels
  const c = document.createElement("canvas");
  c.width = img.naturalWidth; c.height = img.naturalHeight;
  const g = c.getContext("2d");
  g.drawImage(img, 0, 0);
  const d = g.getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
  return n;
}

function drawClicks(g) {
  if (S.clickSlice !== S.slice) return;
  const r = Math.max(3, Math.round(g.canvas.width / 90));
  for (const c of S.clicks) {
    g.lineWidth = Math.max(1.5, r / 2.5);
    g.strokeStyle = "#000"; g.beginPath(); g.arc(c.x + 0.5, c.y + 0.5, r + 1, 0, 2 * Math.PI); g.stroke();
    g.strokeStyle = c.positive ? "#3fb950" : "#f85149";
    g.beginPath(); g.arc(c.x + 0.5, c.y + 0.5, r, 0, 2 * Math.PI); g.stroke();
    g.beginPath(); g.moveTo(c.x + 0.5 - r / 2, c.y + 0.5); g.lineTo(c.x + 0.5 + r / 2, c.y + 0.5);
    if (c.positive) { g.moveTo(c.x + 0.5, c.y + 0.5 - r / 2); g.lineTo(c.x + 0.5, c.y + 0.5 + r / 2); }
    g.stroke();
  }
}

function prefetch(k) {
  const nz = S.vol.shape_zyx[0];
  for (const d of [1, -1, 2, -2]) {
    const j = k + d;
    if (j >= 0 && j < nz) { loadImage(sliceUrl(j)).catch(() => {}); loadImage(overlayUrl(j, "lesions")).catch(() => {}); loadImage(overlayUrl(j, "lungs")).catch(() => {}); }
  }
}

function setSlice(k) {
  if (!S.vol) return;
  const nz = S.vol.shape_zyx[0];
  k = Math.max(0, Math.min(nz - 1, k));
  if (k !== S.slice && S.clicks.length) resetClicks(); // a correction belongs to one slice
  S.slice = k;
  $("slice").value = String(k);
  const row = S.report && S.report.slices ? S.report.slices[k] : null;
  $("hud-slice").textContent = "Slice " + (k + 1) + " / " + nz + (row && S.vol.spacing_known ? "  ·  z " + row.z_mm.toFixed(1) + " mm" : "")
    + (row ? "  ·  lesions " + fmtArea(row.lesion_mm2) : "");
  $("hud-window").textContent = S.vol.is_hu ? (S.window === "lung" ? "Lung W1500 L−600" : "Mediastinum W400 L40") : "display image";
  draw();
  renderPlot();
}
function fmtArea(mm2) { return S.vol.spacing_known ? (mm2 / 100).toFixed(1) + " cm²" : Math.round(mm2) + " px"; }

// --- plot of lesion area per slice ---------------------------------------------------------------------
function worstSlices(n) {
  const rows = (S.report && S.report.slices) || [];
  return rows.filter((r) => r.lesion_mm2 > 0).sort((a, b) => b.lesion_mm2 - a.lesion_mm2).slice(0, n).map((r) => r.index);
}

function renderPlot() {
  const c = $("plot");
  if (!S.report || c.offsetParent === null) return;
  const rows = S.report.slices || [];
  const w = (c.width = c.clientWidth * devicePixelRatio), h = (c.height = 90 * devicePixelRatio);
  const g = c.getContext("2d");
  g.clearRect(0, 0, w, h);
  if (!rows.length) return;
  const maxLung = Math.max(1, ...rows.map((r) => r.lung_mm2));
  const maxLes = Math.max(1, ...rows.map((r) => r.lesion_mm2));
  const bw = w / rows.length, pad = 6 * devicePixelRatio, H = h - pad;
  // lung area: a faint silhouette for orientation
  g.fillStyle = "rgba(74,163,255,0.13)";
  rows.forEach((r, i) => { const bh = (H * r.lung_mm2) / maxLung; g.fillRect(i * bw, h - bh, Math.max(1, bw - 1), bh); });
  const colours = [["ggo_mm2", "rgb(255,200,0)"], ["consolidation_mm2", "rgb(255,60,60)"], ["effusion_mm2", "rgb(180,80,255)"]];
  rows.forEach((r, i) => {
    let y = h;
    for (const [key, col] of colours) {
      const bh = (H * (r[key] || 0)) / maxLes;
      if (bh <= 0) continue;
      g.fillStyle = col; g.fillRect(i * bw, y - bh, Math.max(1, bw - 1), bh); y -= bh;
    }
  });
  g.fillStyle = "#fff";
  g.fillRect(S.slice * bw + bw / 2 - devicePixelRatio, 0, 2 * devicePixelRatio, h);
  const worst = worstSlices(5);
  const box = $("worst");
  box.innerHTML = worst.length ? "worst:" : "no lesions found";
  for (const k of worst) {
    const b = document.createElement("button");
    b.type = "button"; b.textContent = String(k + 1); b.title = "go to slice " + (k + 1);
    b.addEventListener("click", () => setSlice(k));
    box.append(b);
  }
}

// --- report panel --------------------------------------------------------------------------------------
function renderReport(r) {
  const dx = r.diagnosis;
  const lab = $("dx-label");
  lab.textContent = DX_NAMES[dx.label] || dx.label; lab.className = "dx " + dx.label;
  const probs = $("dx-probs"); probs.innerHTML = "";
  for (const [k, v] of Object.entries(dx.probabilities)) {
    probs.insertAdjacentHTML("beforeend", '<div class="prob"><span></span><div class="track"><div></div></div><span class="v"></span></div>');
    const row = probs.lastElementChild;
    row.children[0].textContent = DX_NAMES[k] || k;
    row.children[1].firstElementChild.style.width = (100 * v).toFixed(1) + "%";
    row.children[2].textContent = (100 * v).toFixed(0) + " %";
  }
  renderPattern(r.pattern);
  const sev = r.severity || {};
  $("sev-score").textContent = sev.score === null || sev.score === undefined ? "—" : String(sev.score);
  const lobes = $("sev-lobes"); lobes.innerHTML = "";
  if (sev.lobes) for (const k of ["RUL", "RML", "RLL", "LUL", "LLL"]) {
    const d = document.createElement("div");
    d.title = (sev.lobes_percent && sev.lobes_percent[k] !== null ? sev.lobes_percent[k].toFixed(1) + " % involved" : "");
    d.innerHTML = "<b></b>"; d.firstChild.textContent = String(sev.lobes[k]); d.append(k);
    lobes.append(d);
  }
  const inv = r.involvement_percent || {};
  const box = $("inv"); box.className = "inv"; box.innerHTML = "";
  for (const [k, name] of [["right", "Right"], ["left", "Left"], ["total", "Total"]]) {
    const v = inv[k] || 0;
    box.insertAdjacentHTML("beforeend", '<div class="row"><span></span><div class="track"><div></div></div><span class="v"></span></div>');
    const row = box.lastElementChild;
    row.children[0].textContent = name;
    row.children[1].firstElementChild.style.width = Math.min(100, v).toFixed(1) + "%";
    row.children[2].textContent = v.toFixed(1) + " %";
    row.dataset.key = k;
  }
  const u = r.uncertainty || {};
  if (u.uncertain_percent_of_lungs !== null && u.uncertain_percent_of_lungs !== undefined) {
    box.insertAdjacentHTML("beforeend", '<p class="small muted" id="inv-unsure"></p>');
    // where the HU rule drew the lesions this is the lesion model's own uncertainty, not the masks'
    const modelOnly = Boolean(S.vol && S.vol.heatmap_note);
    box.lastElementChild.textContent = (modelOnly ? "Lesion model uncertainty (the HU rule, not this model, drew "
      + "GGO and consolidation): " : "Model uncertainty: ") + u.uncertain_percent_of_lungs.toFixed(1)
      + " % of the lungs has a lesion probability between 0.3 and 0.7 (Heatmap shows where).";
  }
  const vols = $("vols"); vols.innerHTML = "";
  const ml = (x) => (x === null || x === undefined ? "—" : x.toFixed(x < 10 ? 1 : 0) + " mL");
  const L = r.lungs || {}, E = r.lesions || {};
  for (const [name, v] of [["Left lung", L.left_ml], ["Right lung", L.right_ml], ["Ground-glass", E.ggo_ml],
    ["Consolidation", E.consolidation_ml], ["Pleural effusion", E.effusion_ml]]) {
    const tr = document.createElement("tr");
    tr.innerHTML = "<td></td><td></td>"; tr.children[0].textContent = name; tr.children[1].textContent = ml(v);
    vols.append(tr);
  }
  // the lung's HU (report.json densitometry): threshold shares, not lesions
  const D = (r.densitometry || {}).total;
  if (D) {
    for (const [name, v] of [["Mean lung density", D.mean_hu.toFixed(0) + " HU"],
      ["LAA-950 (emphysema index)", D.laa950_percent.toFixed(2) + " %"],
      ["Lung CT Analyzer affected", D.affected_percent === null ? "—" : D.affected_percent.toFixed(1) + " %"]]) {
      const tr = document.createElement("tr");
      tr.className = "density"; tr.innerHTML = "<td></td><td></td>";
      tr.children[0].textContent = name; tr.children[1].textContent = v;
      vols.append(tr);
    }
  }
  renderDownloads();
  const warns = r.warnings || [];
  $("warn-card").hidden = !warns.length;
  const ul = $("warnings"); ul.innerHTML = "";
  for (const w of warns) { const li = document.createElement("li"); li.textContent = w; ul.append(li); }
}

const RSNA_NAMES = { typical: "Typical", indeterminate: "Indeterminate", atypical: "Atypical", negative: "Negative for pneumonia" };
function renderPattern(p) {
  $("pattern-card").hidden = !p;
  if (!p) return;
  const cat = $("pattern-rsna");
  cat.textContent = RSNA_NAMES[p.rsna_category] || p.rsna_category; cat.className = "rsna " + p.rsna_category;
  $("pattern-corads").textContent = "CO-RADS " + p.co_rads;
  const ul = $("pattern-reasons"); ul.innerHTML = "";
  for (const t of p.reasons || []) { const li = document.createElement("li"); li.textContent = t; ul.append(li); }
}

function renderDownloads() {
  const rev = S.vol.revision;
  $("rev-label").textContent = rev ? "(corrected, revision " + rev + ")" : "(original)";
  const ul = $("downloads"); ul.innerHTML = "";
  const names = { "report.html": "Report (HTML)", "report.json": "Report (JSON)", "lungs.nii.gz": "Lung mask (NIfTI)",
    "lesions.nii.gz": "Lesion mask (NIfTI)", "segmentation.dcm": "DICOM SEG", "lungs.png": "Lung mask (PNG)",
    "lesions.png": "Lesion mask (PNG)", "overlay.png": "Overlay (PNG)" };
  for (const f of S.job.files) {
    if (!names[f]) continue;
    const li = document.createElement("li");
    const a = document.createElement("a");
    a.href = withToken("/api/jobs/" + S.job.id + "/files/" + f + (rev ? "?revision=" + rev : ""));
    a.textContent = names[f];
    if (f === "report.html") { a.target = "_blank"; a.rel = "noopener"; } else a.setAttribute("download", "");
    li.append(a);
    ul.append(li);
  }
  if (rev) {
    const li = document.createElement("li");
    const a = document.createElement("a");
    a.href = withToken("/api/jobs/" + S.job.id + "/files/report.json?revision=0");
    a.textContent = "Original report (before corrections)"; a.className = "small";
    li.append(a); ul.append(li);
  }
}

// --- click correction ---------------------------------------------------------------------------------
function resetClicks() {
  S.clicks = []; S.clickBase = null; S.clickSlice = null;
  $("btn-undo").disabled = true; $("btn-done").disabled = true;
  updateEditHud();
}
function setEdit(on) {
  S.edit = on;
  $("tog-edit").classList.toggle("on", on); $("tog-edit").setAttribute("aria-pressed", String(on));
  $("viewer").classList.toggle("editing", on);
  if (!on) { resetClicks(); draw(); }
  updateEditHud();
}
function updateEditHud() {
  const hud = $("hud-edit");
  hud.hidden = !S.edit;
  hud.textContent = S.busy ? "updating…" : S.negative ? "click: remove lesion" : "left click: add lesion · right click: remove";
}

async function addClick(x, y, positive) {
  if (S.busy || !S.vol) return;
  if (S.clickSlice !== S.slice) { S.clicks = []; S.clickSlice = S.slice; S.clickBase = S.vol.revision; }
  S.clicks.push({ x, y, positive });
  await sendClicks();
}

async function sendClicks(isUndo = false) {
  // a click refines the latest mask with the whole click history (what covidct.interactive expects);
  // an undo replays the shorter history from the mask the correction started from
  S.busy = true; updateEditHud(); draw();
  try {
    const out = await api("/api/jobs/" + S.job.id + "/refine", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ slice: S.clickSlice, clicks: S.clicks, base_revision: isUndo ? S.clickBase : null }),
    });
    applyRefinement(out);
  } catch (e) {
    if (!isUndo) S.clicks.pop();
    showError("edit-error", "Correction failed: " + e.message);
    setTimeout(() => { $("edit-error").hidden = true; }, 6000);
  } finally {
    S.busy = false; updateEditHud();
    $("btn-undo").disabled = !S.clicks.length; $("btn-done").disabled = !S.clicks.length;
  }
}

function applyRefinement(out) {
  S.vol.revision = out.revision;
  S.job.revision = out.revision;
  Object.assign(S.report, {
    slices: out.slices, involvement_percent: out.involvement_percent, severity: out.severity,
    diagnosis: out.diagnosis, lesions: out.lesions, pattern: out.pattern,
  });
  for (const key of Array.from(S.images.keys())) if (key.includes("/lesions.png") || key.includes("/lungs.png")) S.images.delete(key);
  renderReport(S.report);
  for (const id of ["inv", "sev-score", "dx-label"]) { const e = $(id); e.classList.remove("changed"); void e.offsetWidth; e.classList.add("changed"); }
  setSlice(S.slice);
}

function canvasPixel(ev) {
  const c = $("canvas");
  const r = c.getBoundingClientRect();
  const x = Math.floor(((ev.clientX - r.left) / r.width) * c.width);
  const y = Math.floor(((ev.clientY - r.top) / r.height) * c.height);
  return [Math.max(0, Math.min(c.width - 1, x)), Math.max(0, Math.min(c.height - 1, y))];
}

// --- wiring ---------------------------------------------------------------------------------------------
function bind() {
  const drop = $("drop");
  $("file-input").addEventListener("change", (e) => upload(e.target.files));
  for (const ev of ["dragenter", "dragover"]) drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.add("over"); });
  for (const ev of ["dragleave", "drop"]) drop.addEventListener(ev, () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); upload(e.dataTransfer.files); });

  for (const b of document.querySelectorAll("[data-window]")) b.addEventListener("click", () => setWindow(b.dataset.window));
  $("tog-lungs").addEventListener("click", () => toggleLayer("lungs"));
  $("tog-lesions").addEventListener("click", () => toggleLayer("lesions"));
  $("tog-heat").addEventListener("click", toggleHeatmap);
  $("opacity").addEventListener("input", (e) => { S.opacity = e.target.value / 100; draw(); });
  $("slice").addEventListener("input", (e) => setSlice(parseInt(e.target.value, 10)));
  $("tog-edit").addEventListener("click", () => setEdit(!S.edit));
  $("tog-neg").addEventListener("click", () => {
    S.negative = !S.negative; $("tog-neg").classList.toggle("on", S.negative);
    $("tog-neg").setAttribute("aria-pressed", String(S.negative));
    if (S.negative && !S.edit) setEdit(true);
    updateEditHud();
  });
  $("btn-undo").addEventListener("click", undo);
  $("btn-done").addEventListener("click", () => { resetClicks(); draw(); });

  const canvas = $("canvas");
  canvas.addEventListener("mousedown", (e) => {
    if (!S.edit) return;
    e.preventDefault();
    const [x, y] = canvasPixel(e);
    addClick(x, y, e.button === 2 ? false : !S.negative);
  });
  canvas.addEventListener("contextmenu", (e) => { if (S.edit) e.preventDefault(); });
  $("viewer").addEventListener("wheel", (e) => { if (!S.vol) return; e.preventDefault(); setSlice(S.slice + (e.deltaY > 0 ? -1 : 1)); }, { passive: false });
  $("plot").addEventListener("click", (e) => {
    if (!S.report) return;
    const r = e.currentTarget.getBoundingClientRect();
    setSlice(Math.floor(((e.clientX - r.left) / r.width) * S.report.slices.length));
  });
  document.addEventListener("keydown", onKey);
  window.addEventListener("resize", () => { if (S.vol) { sizeCanvas(); renderPlot(); } });
  window.addEventListener("hashchange", route);
}

function setWindow(w) {
  if (!S.vol || !S.vol.is_hu) return;
  S.window = w;
  for (const b of document.querySelectorAll("[data-window]")) b.classList.toggle("on", b.dataset.window === w);
  setSlice(S.slice);
}
function toggleHeatmap() {
  if (!S.vol || !S.vol.heatmap) return;
  S.showHeatmap = !S.showHeatmap;
  $("tog-heat").classList.toggle("on", S.showHeatmap); $("tog-heat").setAttribute("aria-pressed", String(S.showHeatmap));
  $("heat-legend").hidden = !S.showHeatmap;
  draw();
}
function toggleLayer(layer) {
  if (layer === "lungs") S.showLungs = !S.showLungs; else S.showLesions = !S.showLesions;
  const on = layer === "lungs" ? S.showLungs : S.showLesions;
  const b = $(layer === "lungs" ? "tog-lungs" : "tog-lesions");
  b.classList.toggle("on", on); b.setAttribute("aria-pressed", String(on));
  draw();
}
function undo() {
  if (!S.clicks.length || S.busy) return;
  S.clicks.pop();
  sendClicks(true); // the base revision with one click fewer (none: the base as it was)
}

function onKey(e) {
  if (!S.vol || e.target.tagName === "INPUT" && e.target.type !== "range") return;
  const k = e.key;
  if ((e.ctrlKey || e.metaKey) && k.toLowerCase() === "z") { e.preventDefault(); undo(); return; }
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  const moves = { ArrowUp: 1, ArrowRight: 1, ArrowDown: -1, ArrowLeft: -1, PageUp: 10, PageDown: -10 };
  if (k in moves) { e.preventDefault(); setSlice(S.slice + moves[k]); return; }
  if (k === "Home") { e.preventDefault(); setSlice(0); return; }
  if (k === "End") { e.preventDefault(); setSlice(S.vol.shape_zyx[0] - 1); return; }
  const lk = k.toLowerCase();
  if (lk === "w") setWindow(S.window === "lung" ? "mediastinum" : "lung");
  else if (lk === "l") toggleLayer("lungs");
  else if (lk === "o") toggleLayer("lesions");
  else if (lk === "h") toggleHeatmap();
  else if (lk === "e") setEdit(!S.edit);
  else if (lk === "n") {
    const worst = worstSlices(10).sort((a, b) => a - b);
    if (worst.length) setSlice(worst.find((i) => i > S.slice) ?? worst[0]);
  }
}

function route() {
  const m = /job=([A-Za-z0-9_-]{16,64})/.exec(location.hash);
  renderJobList();
  if (m) openJob(m[1]);
}

bind();
route();
