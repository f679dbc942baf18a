/**
 * Training progress on the run page: the recorded series (loss by default, any other on
 * request), the chart geometry and step progress.
 *
 * Points come from the metrics endpoint (`{points: [{step, values}], last_step, ...}`, the whole
 * series, thinned when long) and from the live stream's `metric` events (`{step, values}`);
 * they are merged by step, so one seen twice is drawn once.
 */

function finite(value) {
  return typeof value === "number" && Number.isFinite(value);
}

/** `{step, values: {loss, ...}}` as a flat point `{step, loss, ...}`, or null. */
export function asPoint(value) {
  if (value === null || typeof value !== "object") return null;
  const { step, values } = value;
  if (!Number.isInteger(step) || step < 0) return null;
  if (values === null || typeof values !== "object" || Array.isArray(values)) return null;
  return { ...values, step };
}

/** The points of the metrics endpoint's answer. */
export function normalizeMetrics(body) {
  const points = Array.isArray(body?.points) ? body.points : [];
  return points.map(asPoint).filter((point) => point !== null);
}

/** Points kept in step order, one per step; a later point for a step adds to the earlier. */
export class Series {
  constructor() {
    this.points = [];
    this.nameSet = new Set();
  }

  /** Adds a flat point `{step, ...}`; false if it has no valid step. */
  add(point) {
    if (point === null || typeof point !== "object") return false;
    if (!Number.isInteger(point.step) || point.step < 0) return false;
    for (const name of Object.keys(point)) if (name !== "step") this.nameSet.add(name);
    const points = this.points;
    const last = points[points.length - 1];
    if (last === undefined || last.step < point.step) {
      points.push({ ...point });
      return true;
    }
    let lo = 0;
    let hi = points.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (points[mid].step < point.step) lo = mid + 1;
      else hi = mid;
    }
    if (points[lo]?.step === point.step) points[lo] = { ...points[lo], ...point };
    else points.splice(lo, 0, { ...point });
    return true;
  }

  addAll(values) {
    let changed = false;
    for (const value of values) changed = this.add(value) || changed;
    return changed;
  }

  /** Every metric name seen so far, sorted. */
  names() {
    return [...this.nameSet].sort();
  }

  get lastStep() {
    return this.points.length ? this.points[this.points.length - 1].step : null;
  }

  /** The points that have a finite value for `name` (a diverged run reports null). */
  values(name) {
    return this.points.filter((p) => finite(p[name])).map((p) => [p.step, p[name]]);
  }
}

/**
 * The series a chart shows until the user picks one: `loss`, else a loss of some part of the
 * model (`actor/loss` in GRPO), else the first name; null when there is none.
 */
export function defaultSeries(names) {
  if (names.includes("loss")) return "loss";
  return names.find((name) => name.endsWith("/loss")) ?? names[0] ?? null;
}

/** At most `max` pairs, evenly spaced, always keeping the first and the last. */
export function downsample(pairs, max) {
  if (pairs.length <= max || max < 2) return pairs;
  const out = [];
  const stride = (pairs.length - 1) / (max - 1);
  for (let i = 0; i < max; i += 1) out.push(pairs[Math.round(i * stride)]);
  return out;
}

/**
 * The chart of `[step, value]` pairs in a `width` x `height` box with `pad` around the plot:
 * the polyline's points attribute and the ranges its axes are labelled with.
 */
export function chartGeometry(pairs, { width, height, pad = 0, maxPoints = 2000, domain = null }) {
  if (pairs.length === 0) return null;
  const shown = downsample(pairs, maxPoints);
  // Several series in one chart share a domain (`domainOf`), so equal steps line up.
  const { firstStep, lastStep, min, max } = domain ?? domainOf([shown]);
  const plotW = width - 2 * pad;
  const plotH = height - 2 * pad;
  const x = (step) => pad + (lastStep === firstStep ? plotW / 2 : ((step - firstStep) / (lastStep - firstStep)) * plotW);
  const y = (value) => pad + (max === min ? plotH / 2 : ((max - value) / (max - min)) * plotH);
  const points = shown.map(([step, value]) => `${round2(x(step))},${round2(y(value))}`).join(" ");
  return { points, count: shown.length, firstStep, lastStep, min, max };
}

/**
 * The step and value ranges that hold every `[step, value]` pair of every series; null when
 * there is no pair at all.
 */
export function domainOf(seriesList) {
  let firstStep = Infinity;
  let lastStep = -Infinity;
  let min = Infinity;
  let max = -Infinity;
  for (const pairs of seriesList) {
    for (const [step, value] of pairs) {
      if (step < firstStep) firstStep = step;
      if (step > lastStep) lastStep = step;
      if (value < min) min = value;
      if (value > max) max = value;
    }
  }
  return firstStep === Infinity ? null : { firstStep, lastStep, min, max };
}

function round2(value) {
  return Math.round(value * 100) / 100;
}

/** Fraction done in [0, 1], or null when the run reports no step or has no budget. */
export function progressOf(step, maxSteps) {
  if (!Number.isInteger(step) || !Number.isInteger(maxSteps) || maxSteps <= 0) return null;
  return Math.min(1, Math.max(0, step / maxSteps));
}

/** A number as the page shows it: four significant digits, no exponent for ordinary values. */
export function formatValue(value) {
  if (!finite(value)) return "–";
  const abs = Math.abs(value);
  if (abs !== 0 && (abs < 1e-3 || abs >= 1e6)) return value.toExponential(2);
  return String(Number(value.toPrecision(4)));
}
