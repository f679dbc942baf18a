// Stand-ins for the browser APIs the log viewer uses, driven step by step by the tests.

export class FakeEventSource {
  static instances = [];

  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.listeners = new Map();
    this.closed = false;
    FakeEventSource.instances.push(this);
  }

  static reset() {
    FakeEventSource.instances = [];
  }

  static get last() {
    return FakeEventSource.instances[FakeEventSource.instances.length - 1];
  }

  addEventListener(type, listener) {
    if (!this.listeners.has(type)) this.listeners.set(type, []);
    this.listeners.get(type).push(listener);
  }

  close() {
    this.readyState = 2;
    this.closed = true;
  }

  dispatch(type, event) {
    for (const listener of this.listeners.get(type) ?? []) listener(event);
  }

  open() {
    this.readyState = 1;
    this.dispatch("open", {});
  }

  send(type, data) {
    this.dispatch(type, { data: JSON.stringify(data) });
  }

  log(seq, chunk, stream = "stdout") {
    this.send("log", { seq, stream, chunk, created_at: "2026-01-01T00:00:00Z" });
  }

  status(status, extra = {}) {
    this.send("status", {
      status,
      status_reason: "",
      exit_code: null,
      finished_at: null,
      ...extra,
    });
  }

  /** The connection dropped: `retrying` leaves it CONNECTING (the browser retries). */
  fail({ retrying }) {
    this.readyState = retrying ? 0 : 2;
    this.dispatch("error", {});
  }
}

/** fetch() answering from a table of URL -> [status, body] or a function of the URL. */
export function fakeFetch(routes) {
  const calls = [];
  const fetch = async (url) => {
    calls.push(url);
    const route = typeof routes === "function" ? routes(url) : routes[url];
    if (route === undefined) return { ok: false, status: 404, json: async () => ({}) };
    if (route instanceof Error) throw route;
    const [status, body] = route;
    return { ok: status >= 200 && status < 300, status, json: async () => body };
  };
  fetch.calls = calls;
  return fetch;
}

/** Timers that fire only when the test says so. */
export class ManualTimers {
  constructor() {
    this.now = 0;
    this.nextId = 1;
    this.pending = new Map();
    this.setTimeout = (fn, ms) => {
      const id = this.nextId++;
      this.pending.set(id, { fn, at: this.now + ms });
      return id;
    };
    this.clearTimeout = (id) => {
      this.pending.delete(id);
    };
  }

  /** Moves time forward, running due timers in order and awaiting what they return. */
  async advance(ms) {
    const until = this.now + ms;
    for (;;) {
      const due = [...this.pending].filter(([, t]) => t.at <= until).sort((a, b) => a[1].at - b[1].at);
      if (due.length === 0) break;
      const [id, timer] = due[0];
      this.pending.delete(id);
      this.now = timer.at;
      await timer.fn();
    }
    this.now = until;
  }
}

/** Lets pending promise callbacks run. */
export function settle() {
  return new Promise((resolve) => setImmediate(resolve));
}
