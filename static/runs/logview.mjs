/**
 * The live log of a run page, without the DOM: a snapshot for the first paint, then the run's
 * Server-Sent Events stream resumed right after the snapshot's last seq.
 *
 * Guarantees the page relies on:
 * - every chunk is shown once, in seq order, however often the stream reconnects (the browser's
 *   own retry resumes with Last-Event-ID, the Reconnect button with since_seq);
 * - chunks become lines per stream: a chunk may hold several lines or end mid-line, and the rest
 *   of that line arrives in the same stream's next chunk, perhaps after chunks of the other one;
 * - the stream is closed once the run is terminal (the server sends that status after the last
 *   chunk), and while the stream is down the status is still polled.
 *
 * The page passes callbacks; the tests pass fake EventSource, fetch and timers.
 */

export const TERMINAL_STATUSES = Object.freeze(["completed", "failed", "timeout", "cancelled"]);

// EventSource.readyState
const CLOSED = 2;

export function isTerminal(status) {
  return TERMINAL_STATUSES.includes(status);
}

function runUrl(apiBase, runId) {
  return `${apiBase}/runs/${encodeURIComponent(runId)}`;
}

/** `sinceStep`, when known, asks for the `metric` events of the steps after it too. */
export function streamUrl(apiBase, runId, sinceSeq, sinceStep = null) {
  const metrics = sinceStep === null ? "" : `&since_step=${sinceStep}`;
  return `${runUrl(apiBase, runId)}/logs?since_seq=${sinceSeq}${metrics}`;
}

export function snapshotUrl(apiBase, runId, lines) {
  return `${runUrl(apiBase, runId)}/logs/snapshot?lines=${lines}`;
}

export function statusUrl(apiBase, runId) {
  return `${runUrl(apiBase, runId)}/status`;
}

/**
 * Splits each stream's chunks into line segments `{stream, text, continues, complete, line}`:
 * `continues` says the text extends that stream's open (unterminated) line, `complete` that the
 * line ends here, `line` is the whole line so far.
 */
export class LineAssembler {
  constructor() {
    this.open = new Map();
  }

  push(stream, chunk) {
    const parts = chunk.split("\n");
    const last = parts.length - 1;
    const segments = [];
    parts.forEach((raw, i) => {
      const complete = i < last;
      // Nothing follows the chunk's final newline (or the chunk is empty).
      if (!complete && raw === "") return;
      const text = complete ? raw.replace(/\r$/, "") : raw;
      const before = this.open.get(stream);
      const continues = i === 0 && before !== undefined;
      const line = continues ? before + text : text;
      if (complete) this.open.delete(stream);
      else this.open.set(stream, line);
      segments.push({ stream, text, continues, complete, line });
    });
    return segments;
  }

  /** Ends every open line: the run is over and nothing will complete them. */
  finish() {
    const segments = [...this.open].map(([stream, line]) => ({
      stream,
      text: "",
      continues: true,
      complete: true,
      line,
    }));
    this.open.clear();
    return segments;
  }
}

const noop = () => {};

export class LiveLog {
  /**
   * @param {object} options
   * @param {string} options.runId
   * @param {string} [options.apiBase] "/api/tunix"
   * @param {string} [options.status] the status the page was rendered with
   * @param {number|null} [options.sinceStep] the last training step the page has, if it
   *   wants `metric` events (see streamUrl)
   * @param {number} [options.snapshotLines] lines of the first paint
   * @param {number} [options.pollMs] status polling interval while the stream is down
   * @param {number} [options.staleMs] reconnect when a live stream sent nothing for this long
   *   (the server sends a heartbeat at least every 20 s)
   * @param {Function} [options.onSegments] (segments) => void, in order
   * @param {Function} [options.onLine] (stream, text) => void, once per complete line
   * @param {Function} [options.onStatus] ({status, status_reason, exit_code, finished_at}) => void
   * @param {Function} [options.onState] (state) => void: connecting, live, reconnecting,
   *   unavailable, closed
   * @param {Function} [options.onMetric] (data) => void, for `metric` events
   * @param {Function} [options.onTruncated] () => void: earlier lines exist than the snapshot's
   */
  constructor(options) {
    this.runId = options.runId;
    this.apiBase = options.apiBase ?? "/api/tunix";
    this.status = options.status ?? null;
    this.sinceStep = options.sinceStep ?? null;
    this.snapshotLines = options.snapshotLines ?? 1000;
    this.pollMs = options.pollMs ?? 3000;
    this.staleMs = options.staleMs ?? 45000;
    this.EventSource = options.EventSource ?? globalThis.EventSource;
    this.fetch = options.fetch ?? globalThis.fetch.bind(globalThis);
    this.timers = options.timers ?? {
      setTimeout: globalThis.setTimeout.bind(globalThis),
      clearTimeout: globalThis.clearTimeout.bind(globalThis),
    };
    this.on = {
      segments: options.onSegments ?? noop,
      line: options.onLine ?? noop,
      status: options.onStatus ?? noop,
      state: options.onState ?? noop,
      metric: options.onMetric ?? noop,
      truncated: options.onTruncated ?? noop,
    };
    this.lastSeq = 0;
    this.duplicates = 0;
    this.state = "idle";
    this.source = null;
    this.finished = false;
    this.pollTimer = null;
    this.pollRound = 0;
    this.staleTimer = null;
    this.terminalPolls = 0;
    this.lastStatusKey = "";
    this.assembler = new LineAssembler();
  }

  async start() {
    await this.loadSnapshot();
    this.connect();
  }

  async loadSnapshot() {
    try {
      const response = await this.fetch(snapshotUrl(this.apiBase, this.runId, this.snapshotLines), {
        credentials: "same-origin",
        headers: { Accept: "application/json" },
      });
      if (!response.ok) return;
      this.applySnapshot(await response.json());
    } catch {
      // The stream then starts at the first chunk: slower, but nothing is lost.
    }
  }

  applySnapshot(snapshot) {
    if (snapshot.truncated) this.on.truncated();
    const segments = snapshot.lines.map((line) => ({
      stream: line.stream,
      text: line.text,
      continues: false,
      complete: true,
      line: line.text,
    }));
    this.emit(segments);
    this.lastSeq = Math.max(this.lastSeq, snapshot.last_seq);
  }

  connect() {
    if (this.finished) return;
    this.closeSource();
    const source = new this.EventSource(
      streamUrl(this.apiBase, this.runId, this.lastSeq, this.sinceStep),
    );
    this.source = source;
    this.setState(this.state === "idle" ? "connecting" : "reconnecting");
    const mine = (handler) => (event) => {
      // A replaced source may still deliver a queued event; only the current one counts.
      if (source === this.source && !this.finished) handler(event);
    };
    source.addEventListener(
      "open",
      mine(() => {
        this.setState("live");
        this.stopPolling();
        this.touch();
      }),
    );
    source.addEventListener("log", mine((event) => this.handleLog(JSON.parse(event.data))));
    source.addEventListener("status", mine((event) => this.handleStatus(JSON.parse(event.data))));
    source.addEventListener("metric", mine((event) => this.handleMetric(JSON.parse(event.data))));
    source.addEventListener("heartbeat", mine(() => this.touch()));
    source.addEventListener("error", mine(() => this.handleError(source)));
  }

  /** The Reconnect button: a fresh stream that resumes after the last chunk shown. */
  reconnect() {
    this.connect();
  }

  handleLog(data) {
    this.touch();
    if (!Number.isInteger(data.seq) || data.seq <= this.lastSeq) {
      this.duplicates += 1;
      return;
    }
    this.lastSeq = data.seq;
    this.emit(this.assembler.push(data.stream, data.chunk));
  }

  handleMetric(data) {
    this.touch();
    // A later stream of ours need not resend what this one delivered. (A stream opened without
    // a step sends only steps recorded after it connected, so the first one it sends counts too.)
    const later = this.sinceStep === null || data.step > this.sinceStep;
    if (Number.isInteger(data.step) && data.step >= 0 && later) {
      this.sinceStep = data.step;
    }
    this.on.metric(data);
  }

  handleStatus(data) {
    this.touch();
    this.reportStatus(data);
    if (isTerminal(data.status)) this.finish();
  }

  handleError(source) {
    // A CONNECTING source retries by itself (with Last-Event-ID); a CLOSED one has given up,
    // e.g. after an error answer. Either way the status keeps coming by polling meanwhile.
    if (source.readyState === CLOSED) {
      this.source = null;
      this.setState("unavailable");
    } else {
      this.setState("reconnecting");
    }
    this.clearStale();
    this.startPolling();
  }

  reportStatus(data) {
    const key = JSON.stringify([data.status, data.status_reason, data.exit_code]);
    this.status = data.status;
    if (key === this.lastStatusKey) return;
    this.lastStatusKey = key;
    this.on.status(data);
  }

  startPolling() {
    if (this.pollTimer !== null || this.finished) return;
    // A poll still in flight from an earlier round must not start a second loop.
    const round = ++this.pollRound;
    const tick = async () => {
      await this.pollOnce(round);
      if (round === this.pollRound && this.pollTimer !== null && !this.finished) {
        this.pollTimer = this.timers.setTimeout(tick, this.pollMs);
      }
    };
    this.pollTimer = this.timers.setTimeout(tick, 0);
  }

  stopPolling() {
    if (this.pollTimer !== null) this.timers.clearTimeout(this.pollTimer);
    this.pollTimer = null;
    this.pollRound += 1;
    this.terminalPolls = 0;
  }

  async pollOnce(round = this.pollRound) {
    let data;
    try {
      const response = await this.fetch(statusUrl(this.apiBase, this.runId), {
        credentials: "same-origin",
        headers: { Accept: "application/json" },
      });
      if (!response.ok) return;
      data = await response.json();
    } catch {
      return;
    }
    if (this.finished || round !== this.pollRound) return;
    this.reportStatus(data);
    if (!isTerminal(data.status)) return;
    // A retrying stream still has the last chunks and the final status to deliver; give it a
    // few polls' time before settling for what was shown.
    this.terminalPolls += 1;
    if (this.source === null || this.terminalPolls > 3) this.finish();
  }

  touch() {
    this.clearStale();
    if (this.finished) return;
    this.staleTimer = this.timers.setTimeout(() => {
      this.staleTimer = null;
      if (!this.finished) this.connect();
    }, this.staleMs);
  }

  clearStale() {
    if (this.staleTimer !== null) this.timers.clearTimeout(this.staleTimer);
    this.staleTimer = null;
  }

  closeSource() {
    if (this.source !== null) this.source.close();
    this.source = null;
  }

  finish() {
    if (this.finished) return;
    this.finished = true;
    this.closeSource();
    this.stopPolling();
    this.clearStale();
    this.emit(this.assembler.finish());
    this.setState("closed");
  }

  emit(segments) {
    if (segments.length === 0) return;
    this.on.segments(segments);
    for (const segment of segments) {
      if (segment.complete) this.on.line(segment.stream, segment.line);
    }
  }

  setState(state) {
    if (state === this.state) return;
    this.state = state;
    this.on.state(state);
  }
}
