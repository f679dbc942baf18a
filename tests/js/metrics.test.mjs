import assert from "node:assert/strict";
import { describe, test } from "node:test";

import {
  Series,
  asPoint,
  chartGeometry,
  downsample,
  formatValue,
  normalizeMetrics,
  progressOf,
} from "../../static/runs/metrics.mjs";

describe("the metrics endpoint and metric events", () => {
  test("a point's values are flattened next to its step", () => {
    assert.deepEqual(asPoint({ step: 12, values: { loss: 3.0595, learning_rate: 0.003 } }), {
      step: 12,
      loss: 3.0595,
      learning_rate: 0.003,
    });
    assert.deepEqual(asPoint({ step: 3, values: { loss: null } }), { step: 3, loss: null });
  });

  test("a point without a whole step or without values is no point", () => {
    for (const value of [
      null,
      7,
      { values: { loss: 1 } },
      { step: -1, values: {} },
      { step: 1.5, values: {} },
      { step: "2", values: {} },
      { step: 2 },
      { step: 2, values: [1] },
    ]) {
      assert.equal(asPoint(value), null, JSON.stringify(value));
    }
  });

  test("the endpoint's points become flat points in their order", () => {
    const body = {
      run_id: "x",
      status: "running",
      names: ["loss"],
      points: [
        { step: 1, values: { loss: 3 } },
        { step: 2, values: { loss: 2 } },
        { step: "bad", values: {} },
      ],
      total: 3,
      downsampled: false,
      last_step: 2,
    };
    assert.deepEqual(normalizeMetrics(body), [
      { step: 1, loss: 3 },
      { step: 2, loss: 2 },
    ]);
  });

  test("an answer without points is an empty series", () => {
    for (const body of [null, 3, "x", {}, { points: null }, { points: {} }]) {
      assert.deepEqual(normalizeMetrics(body), [], JSON.stringify(body));
    }
  });
});

describe("Series", () => {
  test("points stay in step order with one point per step", () => {
    const series = new Series();
    series.addAll([
      { step: 3, loss: 1 },
      { step: 1, loss: 3 },
      { step: 2, loss: 2 },
      { step: 2, perplexity: 7 },
      { nostep: true },
    ]);
    assert.deepEqual(series.points, [
      { step: 1, loss: 3 },
      { step: 2, loss: 2, perplexity: 7 },
      { step: 3, loss: 1 },
    ]);
    assert.equal(series.lastStep, 3);
    assert.equal(series.add({ step: "4" }), false);
    assert.equal(series.add(null), false);
  });

  test("values skip steps whose value is missing or not finite", () => {
    const series = new Series();
    series.addAll([
      { step: 1, loss: 3 },
      { step: 2, loss: null },
      { step: 3, perplexity: 1 },
      { step: 4, loss: 1 },
    ]);
    assert.deepEqual(series.values("loss"), [
      [1, 3],
      [4, 1],
    ]);
    assert.equal(new Series().lastStep, null);
  });
});

describe("chart geometry", () => {
  test("the first step is on the left, the highest loss at the top", () => {
    const chart = chartGeometry(
      [
        [1, 4],
        [2, 3],
        [3, 2],
      ],
      { width: 110, height: 60, pad: 5 },
    );
    assert.equal(chart.points, "5,5 55,30 105,55");
    assert.deepEqual([chart.firstStep, chart.lastStep, chart.min, chart.max, chart.count], [
      1, 3, 2, 4, 3,
    ]);
  });

  test("a single point or a flat line sits in the middle", () => {
    assert.equal(chartGeometry([[7, 1]], { width: 100, height: 50 }).points, "50,25");
    assert.equal(
      chartGeometry(
        [
          [1, 2],
          [3, 2],
        ],
        { width: 100, height: 50 },
      ).points,
      "0,25 100,25",
    );
    assert.equal(chartGeometry([], { width: 100, height: 50 }), null);
  });

  test("a long series is drawn from evenly spaced points, first and last kept", () => {
    const pairs = Array.from({ length: 10_001 }, (_, i) => [i, i]);
    const chart = chartGeometry(pairs, { width: 100, height: 100, maxPoints: 101 });
    assert.equal(chart.count, 101);
    assert.equal(chart.firstStep, 0);
    assert.equal(chart.lastStep, 10_000);
    assert.deepEqual(downsample(pairs, 3), [
      [0, 0],
      [5000, 5000],
      [10_000, 10_000],
    ]);
    assert.equal(downsample(pairs.slice(0, 5), 10).length, 5);
  });
});

describe("progress", () => {
  test("progress is the step over the budget, clamped to [0, 1]", () => {
    assert.equal(progressOf(5, 20), 0.25);
    assert.equal(progressOf(25, 20), 1);
    assert.equal(progressOf(null, 20), null);
    assert.equal(progressOf(3, null), null);
  });

  test("values print with four significant digits", () => {
    assert.equal(formatValue(3.059512), "3.06");
    assert.equal(formatValue(0.003), "0.003");
    assert.equal(formatValue(12345.678), "12350");
    assert.equal(formatValue(0.00001234), "1.23e-5");
    assert.equal(formatValue(null), "–");
    assert.equal(formatValue(0), "0");
  });
});
