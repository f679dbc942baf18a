import assert from "node:assert/strict";
import { describe, test } from "node:test";

import {
  Series,
  asPoint,
  chartGeometry,
  defaultSeries,
  domainOf,
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

describe("several series in one chart", () => {
  test("the domain holds every step and value of every series", () => {
    const a = [
      [1, 4],
      [5, 2],
    ];
    const b = [
      [3, 9],
      [9, 1],
    ];
    assert.deepEqual(domainOf([a, b]), { firstStep: 1, lastStep: 9, min: 1, max: 9 });
    assert.deepEqual(domainOf([a, []]), { firstStep: 1, lastStep: 5, min: 2, max: 4 });
    assert.equal(domainOf([]), null);
    assert.equal(domainOf([[], []]), null);
  });

  test("series drawn on a shared domain line up by step", () => {
    const box = { width: 80, height: 40 };
    const short = [
      [0, 10],
      [5, 5],
    ];
    const long = [
      [0, 10],
      [10, 0],
    ];
    const domain = domainOf([short, long]);
    // Step 5 is half way across for both; value 5 is half way down.
    assert.equal(chartGeometry(short, { ...box, domain }).points, "0,0 40,20");
    assert.equal(chartGeometry(long, { ...box, domain }).points, "0,0 80,40");
    // On its own the short series would fill the whole width.
    assert.equal(chartGeometry(short, box).points, "0,0 80,40");
  });

  test("a shared domain is reported as the chart's ranges", () => {
    const domain = { firstStep: 0, lastStep: 100, min: -1, max: 3 };
    const chart = chartGeometry([[50, 1]], { width: 10, height: 10, domain });
    assert.deepEqual(
      { first: chart.firstStep, last: chart.lastStep, min: chart.min, max: chart.max },
      { first: 0, last: 100, min: -1, max: 3 },
    );
    assert.equal(chart.points, "5,5");
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

describe("choosing a series", () => {
  test("the series knows every name it was given, sorted, whatever the step order", () => {
    const series = new Series();
    series.addAll([
      { step: 2, "actor/loss": 0.1, "rewards/mean": 0 },
      { step: 1, "actor/kl": 0.01 },
      { step: 2, "completions/mean_length": 15 },
    ]);
    assert.deepEqual(series.names(), [
      "actor/kl",
      "actor/loss",
      "completions/mean_length",
      "rewards/mean",
    ]);
    assert.deepEqual(series.values("actor/kl"), [[1, 0.01]]);
    assert.deepEqual(series.values("rewards/mean"), [[2, 0]]);
  });

  test("loss is shown by default, else a part's loss, else the first name", () => {
    assert.equal(defaultSeries(["grad_norm", "loss", "perplexity"]), "loss");
    assert.equal(defaultSeries(["actor/kl", "actor/loss", "rewards/mean"]), "actor/loss");
    assert.equal(defaultSeries(["accuracy", "reward"]), "accuracy");
    assert.equal(defaultSeries([]), null);
  });

  test("a series whose values are all non-finite has no chart", () => {
    const series = new Series();
    series.addAll([
      { step: 1, "actor/kl": null },
      { step: 2, "actor/kl": null },
    ]);
    assert.deepEqual(series.names(), ["actor/kl"]);
    assert.equal(chartGeometry(series.values("actor/kl"), { width: 10, height: 10 }), null);
  });
});
