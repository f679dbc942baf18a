import assert from "node:assert/strict";
import { beforeEach, describe, test } from "node:test";

import {
  LineAssembler,
  LiveLog,
  isTerminal,
  snapshotUrl,
  statusUrl,
  streamUrl,
} from "../../static/runs/logview.mjs";
import { FakeEventSource, ManualTimers, fakeFetch, settle } from "./fakes.mjs";

const RUN = "6f1c2e1e-0000-4000-8000-000000000001";
const API = "/api/tunix";
const SNAPSHOT = snapshotUrl(API, RUN, 1000);
const STATUS = statusUrl(API, RUN);

/** Renders segments the way the page does, into plain rows. */
function screen() {
  const rows = [];
  const open = new Map();
  const out = {
    rows,
    statuses: [],
    states: [],
    completeLines: [],
    metrics: [],
    truncated: 0,
    text: () => rows.map((r) => `${r.stream}: ${r.text}`),
    onSegments(segments) {
      for (const s of segments) {
        let index = open.get(s.stream);
        if (s.continues && index !== undefined) rows[index].text += s.text;
        else {
          rows.push({ stream: s.stream, text: s.text });
          index = rows.length - 1;
        }
        if (s.complete) open.delete(s.stream);
        else open.set(s.stream, index);
      }
    },
    onLine: (stream, text) => out.completeLines.push(`${stream}: ${text}`),
    onStatus: (data) => out.statuses.push(data.status),
    onState: (state) => out.states.push(state),
    onMetric: (data) => out.metrics.push(data),
    onTruncated: () => {
      out.truncated += 1;
    },
  };
  return out;
}

function liveLog(fetch, view, timers = new ManualTimers(), extra = {}) {
  const log = new LiveLog({
    runId: RUN,
    apiBase: API,
    status: "running",
    EventSource: FakeEventSource,
    fetch,
    timers,
    ...view,
    ...extra,
  });
  return { log, timers };
}

const snapshot = (lines, last_seq, truncated = false) => [
  200,
  { run_id: RUN, lines, last_seq, truncated },
];

beforeEach(() => FakeEventSource.reset());

describe("LineAssembler", () => {
  test("a chunk with several lines gives one complete segment per line", () => {
    const lines = new LineAssembler().push("stdout", "a\nb\nc\n");
    assert.deepEqual(
      lines.map((s) => [s.text, s.complete, s.continues]),
      [
        ["a", true, false],
        ["b", true, false],
        ["c", true, false],
      ],
    );
  });

  test("a partial line is completed by the same stream's next chunk", () => {
    const asm = new LineAssembler();
    assert.deepEqual(asm.push("stdout", "step 1 lo"), [
      { stream: "stdout", text: "step 1 lo", continues: false, complete: false, line: "step 1 lo" },
    ]);
    const [rest, next] = asm.push("stdout", "ss 3.1\nstep 2");
    assert.deepEqual(rest, {
      stream: "stdout",
      text: "ss 3.1",
      continues: true,
      complete: true,
      line: "step 1 loss 3.1",
    });
    assert.equal(next.line, "step 2");
    assert.equal(next.complete, false);
  });

  test("the other stream's chunk neither completes nor joins an open line", () => {
    const asm = new LineAssembler();
    asm.push("stdout", "half");
    const [err] = asm.push("stderr", "warning\n");
    assert.equal(err.continues, false);
    assert.equal(err.line, "warning");
    const [out] = asm.push("stdout", " done\n");
    assert.equal(out.continues, true);
    assert.equal(out.line, "half done");
  });

  test("a lone newline ends the open line, or is an empty line of its own", () => {
    const asm = new LineAssembler();
    asm.push("stdout", "x");
    assert.deepEqual(
      asm.push("stdout", "\n").map((s) => [s.line, s.continues, s.complete]),
      [["x", true, true]],
    );
    assert.deepEqual(
      asm.push("stdout", "\n").map((s) => [s.line, s.continues, s.complete]),
      [["", false, true]],
    );
    assert.deepEqual(asm.push("stdout", ""), []);
  });

  test("a CRLF line ending loses its carriage return", () => {
    assert.equal(new LineAssembler().push("stdout", "dos\r\n")[0].line, "dos");
  });

  test("finish ends every open line", () => {
    const asm = new LineAssembler();
    asm.push("stdout", "no newline");
    asm.push("stderr", "neither");
    const done = asm.finish();
    assert.deepEqual(
      done.map((s) => [s.stream, s.line, s.complete]),
      [
        ["stdout", "no newline", true],
        ["stderr", "neither", true],
      ],
    );
    assert.deepEqual(asm.finish(), []);
  });
});

describe("LiveLog", () => {
  test("it paints the snapshot, then streams from the snapshot's last seq", async () => {
    const view = screen();
    const fetch = fakeFetch({
      [SNAPSHOT]: snapshot(
        [
          { seq: 4, stream: "stdout", text: "line 1" },
          { seq: 5, stream: "stderr", text: "oops" },
        ],
        5,
        true,
      ),
    });
    const { log } = liveLog(fetch, view);
    await log.start();
    assert.deepEqual(view.text(), ["stdout: line 1", "stderr: oops"]);
    assert.equal(view.truncated, 1);
    assert.equal(FakeEventSource.last.url, streamUrl(API, RUN, 5));
    assert.equal(FakeEventSource.last.url, `${API}/runs/${RUN}/logs?since_seq=5`);
    FakeEventSource.last.open();
    assert.equal(log.state, "live");
    FakeEventSource.last.log(6, "line 2\n");
    assert.deepEqual(view.text(), ["stdout: line 1", "stderr: oops", "stdout: line 2"]);
  });

  test("a chunk at or before the last seq shown is dropped, so nothing is duplicated", async () => {
    const view = screen();
    const fetch = fakeFetch({ [SNAPSHOT]: snapshot([{ seq: 2, stream: "stdout", text: "b" }], 2) });
    const { log } = liveLog(fetch, view);
    await log.start();
    const source = FakeEventSource.last;
    source.open();
    source.log(1, "a\n");
    source.log(2, "b\n");
    source.log(3, "c\n");
    source.log(3, "c\n");
    source.log(4, "d\n");
    assert.deepEqual(view.text(), ["stdout: b", "stdout: c", "stdout: d"]);
    assert.equal(log.duplicates, 3);
    assert.equal(log.lastSeq, 4);
  });

  test("Reconnect resumes after the last chunk shown, with no gap and no duplicate", async () => {
    const view = screen();
    const { log } = liveLog(fakeFetch({ [SNAPSHOT]: snapshot([], 0) }), view);
    await log.start();
    const first = FakeEventSource.last;
    assert.equal(first.url, streamUrl(API, RUN, 0));
    first.open();
    first.log(1, "one\n");
    first.log(2, "two\nthr");
    log.reconnect();
    assert.equal(first.closed, true);
    const second = FakeEventSource.last;
    assert.notEqual(second, first);
    assert.equal(second.url, streamUrl(API, RUN, 2));
    assert.deepEqual(view.states, ["connecting", "live", "reconnecting"]);
    // The server may resend what this client had already seen; a late event of the old
    // connection is ignored.
    second.open();
    second.log(2, "two\nthr");
    first.log(3, "ee\n");
    second.log(3, "ee\n");
    second.log(4, "four\n");
    assert.deepEqual(view.text(), [
      "stdout: one",
      "stdout: two",
      "stdout: three",
      "stdout: four",
    ]);
    assert.deepEqual(view.completeLines, view.text());
  });

  test("the terminal status closes the stream and ends the open lines", async () => {
    const view = screen();
    const { log, timers } = liveLog(fakeFetch({ [SNAPSHOT]: snapshot([], 0) }), view);
    await log.start();
    const source = FakeEventSource.last;
    source.open();
    source.status("running");
    source.log(1, "saving", "stdout");
    source.log(2, "Traceback\n", "stderr");
    source.status("failed", { exit_code: 1, status_reason: "exit 1" });
    assert.equal(source.closed, true);
    assert.equal(log.state, "closed");
    assert.deepEqual(view.statuses, ["running", "failed"]);
    assert.deepEqual(view.text(), ["stdout: saving", "stderr: Traceback"]);
    assert.deepEqual(view.completeLines, ["stderr: Traceback", "stdout: saving"]);
    source.log(3, "late\n");
    source.status("completed");
    log.reconnect();
    assert.equal(FakeEventSource.instances.length, 1, "no stream opens after the end");
    assert.equal(timers.pending.size, 0, "no timer is left running");
    assert.deepEqual(view.statuses, ["running", "failed"]);
  });

  test("every terminal status closes it", () => {
    for (const status of ["completed", "failed", "timeout", "cancelled"]) {
      assert.equal(isTerminal(status), true, status);
    }
    for (const status of ["pending", "running", "cancel_requested", undefined]) {
      assert.equal(isTerminal(status), false, status);
    }
  });

  test("while the stream retries, the status is polled; it stops once the stream is back", async () => {
    const view = screen();
    let status = "running";
    const fetch = fakeFetch((url) => {
      if (url === SNAPSHOT) return snapshot([], 0);
      if (url === STATUS) return [200, { run_id: RUN, status, status_reason: "", exit_code: null }];
      return undefined;
    });
    const { log, timers } = liveLog(fetch, view, new ManualTimers(), { pollMs: 1000 });
    await log.start();
    const source = FakeEventSource.last;
    source.open();
    source.fail({ retrying: true });
    assert.equal(log.state, "reconnecting");
    await timers.advance(0);
    status = "cancel_requested";
    await timers.advance(1000);
    assert.deepEqual(view.statuses, ["running", "cancel_requested"]);
    const polls = fetch.calls.filter((u) => u === STATUS).length;
    assert.equal(polls, 2);
    source.open();
    assert.equal(log.state, "live");
    await timers.advance(10_000);
    assert.equal(fetch.calls.filter((u) => u === STATUS).length, polls);
  });

  test("when the stream gives up, polling still reports the end and closes the viewer", async () => {
    const view = screen();
    let status = "running";
    const fetch = fakeFetch((url) => {
      if (url === SNAPSHOT) return snapshot([], 0);
      if (url === STATUS) return [200, { run_id: RUN, status, status_reason: "", exit_code: 0 }];
      return undefined;
    });
    const { log, timers } = liveLog(fetch, view, new ManualTimers(), { pollMs: 1000 });
    await log.start();
    FakeEventSource.last.fail({ retrying: false });
    assert.equal(log.state, "unavailable");
    await timers.advance(0);
    assert.deepEqual(view.statuses, ["running"]);
    status = "completed";
    await timers.advance(1000);
    assert.deepEqual(view.statuses, ["running", "completed"]);
    assert.equal(log.state, "closed");
    assert.equal(timers.pending.size, 0);
  });

  test("a retrying stream gets a few polls' time to deliver the end itself", async () => {
    const view = screen();
    const fetch = fakeFetch((url) => {
      if (url === SNAPSHOT) return snapshot([], 0);
      if (url === STATUS) return [200, { status: "completed", status_reason: "", exit_code: 0 }];
      return undefined;
    });
    const { log, timers } = liveLog(fetch, view, new ManualTimers(), { pollMs: 1000 });
    await log.start();
    const source = FakeEventSource.last;
    source.fail({ retrying: true });
    await timers.advance(2000);
    assert.equal(log.state, "reconnecting");
    assert.deepEqual(view.statuses, ["completed"]);
    source.open();
    source.log(1, "last words\n");
    source.status("completed", { exit_code: 0 });
    assert.equal(log.state, "closed");
    assert.deepEqual(view.text(), ["stdout: last words"]);
  });

  test("a retrying stream that never comes back is given up after a few polls", async () => {
    const view = screen();
    const fetch = fakeFetch((url) => {
      if (url === SNAPSHOT) return snapshot([], 0);
      if (url === STATUS) return [200, { status: "timeout", status_reason: "", exit_code: null }];
      return undefined;
    });
    const { log, timers } = liveLog(fetch, view, new ManualTimers(), { pollMs: 1000 });
    await log.start();
    const source = FakeEventSource.last;
    source.fail({ retrying: true });
    await timers.advance(10_000);
    assert.equal(log.state, "closed");
    assert.equal(source.closed, true);
    assert.equal(timers.pending.size, 0);
  });

  test("without a snapshot the stream starts at the first chunk", async () => {
    const view = screen();
    const fetch = fakeFetch({ [SNAPSHOT]: new Error("offline") });
    const { log } = liveLog(fetch, view);
    await log.start();
    assert.equal(FakeEventSource.last.url, streamUrl(API, RUN, 0));
    const refused = liveLog(fakeFetch({}), screen());
    await refused.log.start();
    assert.equal(FakeEventSource.last.url, streamUrl(API, RUN, 0));
  });

  test("a live stream that goes silent past the heartbeat allowance is reopened", async () => {
    const view = screen();
    const { log, timers } = liveLog(fakeFetch({ [SNAPSHOT]: snapshot([], 0) }), view, undefined, {
      staleMs: 45_000,
    });
    await log.start();
    const first = FakeEventSource.last;
    first.open();
    await timers.advance(30_000);
    first.send("heartbeat", { time: "now" });
    await timers.advance(30_000);
    first.log(1, "x\n");
    await timers.advance(44_000);
    assert.equal(FakeEventSource.instances.length, 1);
    await timers.advance(2_000);
    assert.equal(FakeEventSource.instances.length, 2);
    assert.equal(first.closed, true);
    assert.equal(FakeEventSource.last.url, streamUrl(API, RUN, 1));
  });

  test("metric events reach the page, and a new stream asks only for later steps", async () => {
    const view = screen();
    const { log } = liveLog(fakeFetch({ [SNAPSHOT]: snapshot([], 9) }), view, undefined, {
      sinceStep: 4,
    });
    await log.start();
    const first = FakeEventSource.last;
    assert.equal(first.url, `${API}/runs/${RUN}/logs?since_seq=9&since_step=4`);
    first.open();
    first.send("metric", { step: 5, values: { loss: 2.5 } });
    first.send("metric", { step: 6, values: { loss: 2.4 } });
    assert.deepEqual(
      view.metrics.map((m) => m.step),
      [5, 6],
    );
    log.reconnect();
    assert.equal(FakeEventSource.last.url, streamUrl(API, RUN, 9, 6));
    await settle();
  });

  test("a stream opened before any step counts the first step it sends, even step 0", async () => {
    const view = screen();
    const { log } = liveLog(fakeFetch({ [SNAPSHOT]: snapshot([], 9) }), view);
    await log.start();
    const first = FakeEventSource.last;
    assert.equal(first.url, `${API}/runs/${RUN}/logs?since_seq=9`);
    first.open();
    first.send("metric", { step: 0, values: { "rewards/mean": 0 } });
    assert.deepEqual(
      view.metrics.map((m) => m.step),
      [0],
    );
    log.reconnect();
    assert.equal(FakeEventSource.last.url, streamUrl(API, RUN, 9, 0));
    await settle();
  });

  test("without a step to start from, the stream is not asked for metrics", () => {
    assert.equal(streamUrl(API, RUN, 3), `${API}/runs/${RUN}/logs?since_seq=3`);
    assert.equal(streamUrl(API, RUN, 3, 0), `${API}/runs/${RUN}/logs?since_seq=3&since_step=0`);
  });
});
