// The compare page: one chart per metric with every run as a series on shared axes, kept live
// for runs still training by polling the metrics API; the final-metrics table is re-fetched as
// server-rendered HTML when it changes. The logic worth testing lives in metrics.mjs.
import { Series, chartGeometry, domainOf, formatValue, normalizeMetrics } from "./metrics.mjs";

const CHART = { width: 576, height: 168 };
// The final-metrics table is re-rendered at most this often while runs train.
const FINAL_REFRESH_MS = 5000;

const config = JSON.parse(document.getElementById("compare-page-config").textContent);
const page = document.querySelector("[data-compare-page]");
const charts = page.querySelector('[data-testid="compare-charts"]');
const template = page.querySelector("template[data-chart-template]");
const stateNote = page.querySelector('[data-testid="compare-state"]');
const terminal = new Set(config.terminal);

const runs = config.runs.map((run) => ({ ...run, series: new Series(), polling: false }));
const byId = new Map(runs.map((run) => [run.id, run]));
// Metric names in the order the server chose (loss first), then any that appear later.
const names = config.metrics.map((metric) => metric.name);
const figures = new Map();

function say(text) {
  stateNote.textContent = text;
}

// -- charts ---------------------------------------------------------------------------------------

function figureFor(name) {
  let figure = figures.get(name);
  if (figure) return figure;
  figure = template.content.firstElementChild.cloneNode(true);
  figure.dataset.metric = name;
  figure.querySelector("title").textContent = `${name} by step, one line per run`;
  figures.set(name, figure);
  charts.append(figure);
  return figure;
}

function learnNames() {
  for (const run of runs) {
    for (const point of run.series.points) {
      for (const name of Object.keys(point)) {
        if (name !== "step" && !names.includes(name)) names.push(name);
      }
    }
  }
}

function drawChart(name) {
  const figure = figureFor(name);
  const pairs = runs.map((run) => run.series.values(name));
  const domain = domainOf(pairs);
  const summary = [];
  runs.forEach((run, i) => {
    const line = figure.querySelector(`polyline[data-run-id="${run.id}"]`);
    const chart = domain && chartGeometry(pairs[i], { ...CHART, domain });
    line.setAttribute("points", chart ? chart.points : "");
    line.dataset.count = String(chart ? chart.count : 0);
    const last = pairs[i][pairs[i].length - 1];
    if (last) summary.push(`${run.title} ${formatValue(last[1])} at step ${last[0]}`);
  });
  const tick = (which) => figure.querySelector(`[data-tick="${which}"]`);
  tick("max").textContent = domain ? formatValue(domain.max) : "";
  tick("min").textContent = domain ? formatValue(domain.min) : "";
  tick("first").textContent = domain ? `step ${domain.firstStep}` : "";
  tick("last").textContent = domain ? `step ${domain.lastStep}` : "";
  figure.querySelector("figcaption").textContent = summary.length
    ? `${name}: ${summary.join("; ")}.`
    : `${name}: no value yet.`;
}

let drawPending = false;

function redraw() {
  if (drawPending) return;
  drawPending = true;
  requestAnimationFrame(() => {
    drawPending = false;
    learnNames();
    for (const name of names) drawChart(name);
    const live = runs.filter((run) => !terminal.has(run.status)).length;
    say(
      live
        ? `Live: ${live} of ${runs.length} runs still going; their lines grow as they train.`
        : "Every run has ended.",
    );
  });
}

// -- status and the final-metrics table -----------------------------------------------------------

function showStatus(run, status) {
  if (!status || status === run.status) return false;
  run.status = status;
  const badge = page.querySelector(
    `[data-testid="compare-legend"] li[data-run-id="${run.id}"] .badge`,
  );
  if (badge) {
    badge.textContent = status;
    badge.dataset.status = status;
    badge.className = `badge status-${status}`;
  }
  return true;
}

let finalRound = 0;
let finalTimer = null;
let finalDue = false;

async function refreshFinal() {
  finalDue = false;
  const round = ++finalRound;
  let html;
  try {
    const response = await fetch(config.finalPanel, {
      credentials: "same-origin",
      headers: { Accept: "text/html" },
    });
    if (!response.ok) return;
    html = await response.text();
  } catch {
    return;
  }
  // A slower, older answer must not replace a newer one.
  if (round !== finalRound) return;
  // Our own template's output, escaped by Django.
  page.querySelector("[data-final-panel]").innerHTML = html;
}

function finalChanged({ now = false } = {}) {
  if (now) {
    clearTimeout(finalTimer);
    finalTimer = null;
    refreshFinal();
    return;
  }
  finalDue = true;
  if (finalTimer !== null) return;
  finalTimer = setTimeout(() => {
    finalTimer = null;
    if (finalDue) refreshFinal();
  }, FINAL_REFRESH_MS);
}

// -- data -----------------------------------------------------------------------------------------

async function getJson(url) {
  const response = await fetch(url, {
    credentials: "same-origin",
    headers: { Accept: "application/json" },
  });
  if (!response.ok) throw new Error(`${response.status}`);
  return response.json();
}

async function loadAll() {
  const query = `ids=${encodeURIComponent(config.ids.join(","))}`;
  const body = await getJson(`${config.apiBase}/runs/compare?${query}`);
  for (const entry of body.runs) {
    const run = byId.get(entry.id);
    if (!run) continue;
    run.series.addAll(normalizeMetrics(entry.series));
    showStatus(run, entry.status);
  }
  for (const metric of body.metrics) {
    if (!names.includes(metric.name)) names.push(metric.name);
  }
}

/** The steps a live run added since the last look; stops once the run has ended. */
async function poll(run) {
  if (run.polling) return;
  run.polling = true;
  try {
    const since = run.series.lastStep;
    const query = since === null ? "" : `?since_step=${since}`;
    const body = await getJson(`${config.apiBase}/runs/${run.id}/metrics${query}`);
    const grew = run.series.addAll(normalizeMetrics(body));
    const ended = showStatus(run, body.status) && terminal.has(body.status);
    if (grew || ended) redraw();
    if (ended) finalChanged({ now: true });
    else if (grew) finalChanged();
  } catch {
    // The next round tries again.
  } finally {
    run.polling = false;
  }
}

let pollTimer = null;

function pollLive() {
  const live = runs.filter((run) => !terminal.has(run.status));
  if (live.length === 0) {
    clearInterval(pollTimer);
    pollTimer = null;
    return;
  }
  for (const run of live) poll(run);
}

// -- start ----------------------------------------------------------------------------------------

say("Loading the series…");
for (const name of names) figureFor(name);
try {
  await loadAll();
} catch {
  say("The series could not be loaded; reload the page to try again.");
}
redraw();
if (runs.some((run) => !terminal.has(run.status))) {
  pollTimer = setInterval(pollLive, config.pollMs);
}
