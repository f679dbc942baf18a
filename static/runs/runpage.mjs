// The run page: tabs, the cancel dialog, the live log, status, progress, loss chart and the
// panels re-fetched as server-rendered HTML. The logic worth testing lives in logview.mjs and
// metrics.mjs; this module only wires it to the page.
import { LiveLog, isTerminal } from "./logview.mjs";
import {
  Series,
  asPoint,
  chartGeometry,
  defaultSeries,
  formatValue,
  normalizeMetrics,
  progressOf,
} from "./metrics.mjs";

// The log keeps the newest lines in the page; older ones are dropped from the DOM.
const MAX_LINES = 5000;
// Checkpoints register while a run trains; the worker registers the last files before it
// records the terminal status, so one refresh at that status lists them all.
const ARTIFACT_REFRESH_MS = 20_000;
const CHART = { width: 584, height: 148 };

const config = JSON.parse(document.getElementById("run-page-config").textContent);
const page = document.querySelector("[data-run-page]");
const byTestId = (id) => page.querySelector(`[data-testid="${id}"]`);

let currentStatus = config.status;

// -- tabs -----------------------------------------------------------------------------------------

const tabList = page.querySelector("[data-tabs]");
const tabs = [...tabList.querySelectorAll("a")];
const tabNames = tabs.map((tab) => tab.hash.slice(1));

function selectTab(name, { focus = false } = {}) {
  for (const tab of tabs) {
    const panel = document.getElementById(tab.getAttribute("aria-controls"));
    const selected = panel.id === name;
    tab.setAttribute("aria-selected", String(selected));
    tab.tabIndex = selected ? 0 : -1;
    panel.hidden = !selected;
    if (selected && focus) tab.focus();
  }
  if (name === "logs") logView.shown();
  if (name === "artifacts" && !isTerminal(currentStatus)) refreshPanel("artifacts");
}

function setupTabs() {
  // Without JavaScript these are links to sections that are all shown.
  tabList.setAttribute("role", "tablist");
  tabs.forEach((tab, i) => {
    tab.setAttribute("role", "tab");
    tab.setAttribute("aria-controls", tabNames[i]);
    document.getElementById(tabNames[i]).setAttribute("role", "tabpanel");
  });
  for (const tab of tabs) {
    tab.addEventListener("click", (event) => {
      event.preventDefault();
      const name = tab.getAttribute("aria-controls");
      history.replaceState(null, "", `#${name}`);
      selectTab(name);
    });
  }
  tabList.addEventListener("keydown", (event) => {
    const at = tabNames.indexOf(document.activeElement?.getAttribute("aria-controls"));
    if (at < 0) return;
    const moves = { ArrowLeft: at - 1, ArrowRight: at + 1, Home: 0, End: tabNames.length - 1 };
    if (event.key === " ") {
      event.preventDefault();
      tabs[at].click();
      return;
    }
    if (!(event.key in moves)) return;
    event.preventDefault();
    const next = tabNames[(moves[event.key] + tabNames.length) % tabNames.length];
    history.replaceState(null, "", `#${next}`);
    selectTab(next, { focus: true });
  });
  window.addEventListener("hashchange", () => {
    const name = location.hash.slice(1);
    if (tabNames.includes(name)) selectTab(name);
  });
}

// -- cancel ---------------------------------------------------------------------------------------

const cancelForm = page.querySelector("form[data-cancel]");
const cancelDialog = byTestId("cancel-dialog");
// Shown instead of the form to a user who may not cancel this run, with the reason.
const cancelRefused = page.querySelector("[data-cancel-refused]");

function setupCancel() {
  // Without <dialog> support the form goes to the confirmation page instead.
  if (!cancelForm || !cancelDialog || typeof cancelDialog.showModal !== "function") return;
  cancelForm.addEventListener("submit", (event) => {
    event.preventDefault();
    cancelDialog.showModal();
  });
  cancelDialog.querySelector("[data-dialog-close]").addEventListener("click", () => {
    cancelDialog.close();
  });
}

function hideCancel() {
  if (cancelDialog?.open) cancelDialog.close();
  if (cancelForm) cancelForm.hidden = true;
  if (cancelRefused) cancelRefused.hidden = true;
}

// -- panels ---------------------------------------------------------------------------------------

const panelRounds = new Map();

async function refreshPanel(name) {
  const round = (panelRounds.get(name) ?? 0) + 1;
  panelRounds.set(name, round);
  let html;
  try {
    const response = await fetch(config.panels[name], {
      credentials: "same-origin",
      headers: { Accept: "text/html" },
    });
    if (!response.ok) return;
    html = await response.text();
  } catch {
    return;
  }
  // A slower, older answer must not replace a newer one.
  if (panelRounds.get(name) !== round) return;
  // Our own template's output, escaped by Django.
  page.querySelector(`[data-panel="${name}"]`).innerHTML = html;
}

let artifactTimer = null;

function watchArtifacts() {
  if (isTerminal(currentStatus)) return;
  artifactTimer = setInterval(() => refreshPanel("artifacts"), ARTIFACT_REFRESH_MS);
}

// -- status ---------------------------------------------------------------------------------------

const badge = byTestId("run-status");

function showStatus(data) {
  const changed = data.status !== currentStatus;
  currentStatus = data.status;
  badge.textContent = data.status;
  badge.dataset.status = data.status;
  badge.className = `badge status-${data.status}`;
  if (data.status !== "pending" && data.status !== "running") hideCancel();
  if (changed) refreshPanel("overview");
  if (isTerminal(data.status)) {
    clearInterval(artifactTimer);
    refreshPanel("artifacts");
  }
}

// -- log ------------------------------------------------------------------------------------------

class LogView {
  constructor(box, jump, truncatedNote) {
    this.box = box;
    this.jump = jump;
    this.truncatedNote = truncatedNote;
    this.queue = [];
    this.open = new Map();
    this.follow = true;
    this.lines = 0;
    this.flushTimer = null;
    box.replaceChildren();
    box.addEventListener("scroll", () => {
      this.follow = this.atBottom();
      if (this.follow) this.jump.hidden = true;
    });
    jump.addEventListener("click", () => {
      this.follow = true;
      this.jump.hidden = true;
      this.toBottom();
    });
  }

  atBottom() {
    const box = this.box;
    return box.scrollHeight - box.scrollTop - box.clientHeight < 24;
  }

  toBottom() {
    this.box.scrollTop = this.box.scrollHeight;
  }

  shown() {
    if (this.follow) this.toBottom();
  }

  push(segments) {
    for (const segment of segments) this.queue.push(segment);
    // Batched: a busy run sends many small chunks, and one DOM update per batch keeps up.
    if (this.flushTimer === null) this.flushTimer = setTimeout(() => this.flush(), 50);
  }

  flush() {
    this.flushTimer = null;
    const batch = this.queue;
    this.queue = [];
    const fragment = document.createDocumentFragment();
    for (const s of batch) {
      let line = s.continues ? this.open.get(s.stream) : undefined;
      if (line) {
        line.textContent += s.text;
      } else {
        line = document.createElement("div");
        line.className = s.stream === "stderr" ? "line err" : "line out";
        line.dataset.stream = s.stream;
        line.textContent = s.text;
        fragment.append(line);
        this.lines += 1;
      }
      if (s.complete) this.open.delete(s.stream);
      else this.open.set(s.stream, line);
    }
    this.box.append(fragment);
    while (this.lines > MAX_LINES && this.box.firstElementChild) {
      this.box.firstElementChild.remove();
      this.lines -= 1;
      this.truncatedNote.hidden = false;
    }
    if (this.follow) this.toBottom();
    else if (batch.length) this.jump.hidden = false;
  }
}

const logView = new LogView(
  byTestId("live-logs"),
  byTestId("jump-latest"),
  byTestId("log-truncated"),
);

const streamState = byTestId("stream-state");
const reconnectButton = byTestId("reconnect");
const STATE_TEXT = {
  connecting: "Connecting…",
  live: "Live",
  reconnecting: "Reconnecting… (status is polled meanwhile)",
  unavailable: "Live stream unavailable; status is polled. Reconnect to try again.",
  closed: "Log complete: the run has ended.",
};

function showState(state) {
  streamState.textContent = STATE_TEXT[state] ?? state;
  streamState.dataset.state = state;
  reconnectButton.hidden = state === "closed";
}

// -- progress and the chart ------------------------------------------------------------------------

const series = new Series();
const progress = byTestId("progress");
const progressText = byTestId("progress-text");
const chartLine = byTestId("loss-line");
const chartSummary = byTestId("loss-summary");
const chartTitle = byTestId("chart-title");
const picker = byTestId("series-picker");
const pickerRow = byTestId("series-choice");
const tick = (name) => page.querySelector(`[data-tick="${name}"]`);
let drawPending = false;
// The series the user picked; until then the default (loss) is shown.
let picked = null;
let listed = "";

function addPoints(points) {
  if (!series.addAll(points) || drawPending) return;
  drawPending = true;
  requestAnimationFrame(draw);
}

/** The picker lists every recorded series; rebuilt only when a new name appears. */
function showChoices(names, current) {
  const key = names.join("\n");
  if (key !== listed) {
    listed = key;
    picker.replaceChildren(
      ...names.map((name) => {
        const option = document.createElement("option");
        option.value = name;
        option.textContent = name;
        return option;
      }),
    );
    pickerRow.hidden = names.length === 0;
  }
  if (current !== null) picker.value = current;
}

picker.addEventListener("change", () => {
  picked = picker.value;
  draw();
});

function draw() {
  drawPending = false;
  const step = series.lastStep;
  if (step !== null) {
    const fraction = progressOf(step, config.maxSteps);
    if (fraction !== null) {
      progress.max = config.maxSteps;
      progress.value = Math.min(step, config.maxSteps);
      progressText.textContent = `step ${step} of ${config.maxSteps} (${Math.round(fraction * 100)}%)`;
    } else {
      progress.removeAttribute("value");
      progressText.textContent = `step ${step}`;
    }
  }
  showLatest();
  const names = series.names();
  const name = picked !== null && names.includes(picked) ? picked : defaultSeries(names);
  showChoices(names, name);
  if (name === null) return;
  chartLine.dataset.series = name;
  chartTitle.textContent = `${name} by step`;
  const pairs = series.values(name);
  const chart = chartGeometry(pairs, CHART);
  if (chart === null) {
    chartLine.setAttribute("points", "");
    chartLine.dataset.count = "0";
    chartSummary.textContent = `No finite ${name} value reported yet.`;
    return;
  }
  chartLine.setAttribute("points", chart.points);
  chartLine.dataset.count = String(chart.count);
  tick("max").textContent = formatValue(chart.max);
  tick("min").textContent = formatValue(chart.min);
  tick("first").textContent = `step ${chart.firstStep}`;
  tick("last").textContent = `step ${chart.lastStep}`;
  const [firstStep, firstValue] = pairs[0];
  const [lastStep, lastValue] = pairs[pairs.length - 1];
  const label = name === "loss" ? "Loss" : name;
  chartSummary.textContent =
    pairs.length === 1
      ? `${label} ${formatValue(lastValue)} at step ${lastStep}.`
      : `${label} ${formatValue(firstValue)} at step ${firstStep}, ${formatValue(lastValue)} at step ${lastStep}.`;
}

const metricsUrl = `${config.apiBase}/runs/${config.runId}/metrics`;
let metricsPoll = null;

/** Adds the steps after `sinceStep` (all of them without it); returns the last step known. */
const latest = byTestId("latest-metrics");

function showLatest() {
  const last = series.points[series.points.length - 1];
  if (!last) return;
  const rows = [];
  for (const [name, value] of Object.entries(last)) {
    if (name === "step") continue;
    const term = document.createElement("dt");
    term.textContent = name;
    const detail = document.createElement("dd");
    detail.textContent = formatValue(value);
    rows.push(term, detail);
  }
  latest.replaceChildren(...rows);
}

async function loadMetrics(sinceStep = null) {
  const query = sinceStep === null ? "" : `?since_step=${sinceStep}`;
  try {
    const response = await fetch(`${metricsUrl}${query}`, {
      credentials: "same-origin",
      headers: { Accept: "application/json" },
    });
    if (response.ok) {
      const body = await response.json();
      addPoints(normalizeMetrics(body));
      return body.last_step ?? sinceStep;
    }
  } catch {
    // The chart still fills from the stream's metric events.
  }
  return sinceStep;
}

/** While the stream is down, the chart keeps up by polling, like the status does. */
function pollMetrics(state) {
  const down = state === "reconnecting" || state === "unavailable";
  if (down && metricsPoll === null) {
    metricsPoll = setInterval(() => loadMetrics(series.lastStep), live.pollMs);
  } else if (!down && metricsPoll !== null) {
    clearInterval(metricsPoll);
    metricsPoll = null;
  }
  // A stream that ended by polling delivered no final metrics: fetch what is left.
  if (state === "closed") loadMetrics(series.lastStep);
}

// Steps start at 0 (GRPO logs its first rewards there), so "no step yet" is null, never 0. A
// stream opened before any step asks for the steps recorded after it connected; the whole series
// is read once more when it is live, for a step recorded in between.
function catchUp(state) {
  if (state === "live" && series.lastStep === null) loadMetrics();
}

function onMetric(data) {
  const point = asPoint(data);
  if (point) addPoints([point]);
}

// -- start ----------------------------------------------------------------------------------------

setupTabs();
setupCancel();
const initial = location.hash.slice(1);
selectTab(tabNames.includes(initial) ? initial : "overview");
if (isTerminal(currentStatus) || currentStatus === "cancel_requested") hideCancel();
watchArtifacts();

const live = new LiveLog({
  runId: config.runId,
  apiBase: config.apiBase,
  status: config.status,
  onSegments: (segments) => logView.push(segments),
  onStatus: showStatus,
  onState: (state) => {
    showState(state);
    pollMetrics(state);
    catchUp(state);
  },
  onMetric,
  onTruncated: () => {
    byTestId("log-truncated").hidden = false;
  },
});
reconnectButton.addEventListener("click", () => live.reconnect());
// The series so far and the log's first paint, then one stream carrying both onwards.
const [lastStep] = await Promise.all([loadMetrics(), live.loadSnapshot()]);
live.sinceStep = lastStep;
live.connect();
