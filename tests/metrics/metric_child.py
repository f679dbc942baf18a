"""A test child that reports training metrics the way recipes do, split and mixed with noise.

Reads the run's config.json (first argument). For each step 1..`steps` it prints a plain progress
line and a `tunixops.metric` line; with `split` each metric line goes out in three writes with
pauses between, so the worker reads it in pieces. Then it reprints steps `resume_from`..`steps`
with new losses (what a resumed attempt does), prints `pad` bytes of filler per step, and exits
with `exit_code`. Losses are `scale * 4 / step`, so runs with different scales draw apart.
"""

import json
import math
import sys
import time
from pathlib import Path


def metric_line(step: int, loss: float, **extra: float) -> str:
    return "tunixops.metric " + json.dumps({"step": step, "loss": loss, **extra}) + "\n"


def emit(line: str, *, split: bool) -> None:
    out = sys.stdout
    if not split:
        out.write(line)
        return
    thirds = [
        line[: len(line) // 3],
        line[len(line) // 3 : 2 * len(line) // 3],
        line[2 * len(line) // 3 :],
    ]
    for piece in thirds:
        out.write(piece)
        out.flush()
        time.sleep(0.02)


def main() -> int:
    config = json.loads(Path(sys.argv[1]).read_text())
    steps = config.get("steps", 0)
    split = config.get("split", False)
    pause = config.get("pause", 0.0)
    pad = "p" * config.get("pad", 0)
    scale = config.get("scale", 1.0)
    for step in range(1, steps + 1):
        loss = scale * 4.0 / step
        sys.stdout.write(f"step {step} loss {loss:.4f}{' ' + pad if pad else ''}\n")
        extra = {"learning_rate": 0.001, "perplexity": math.exp(loss)}
        if step == config.get("nan_step"):
            # What a diverged run prints: Python's json writes the non-standard NaN literal.
            extra["grad_norm"] = math.nan
        emit(metric_line(step, loss, **extra), split=split)
        if pause:
            sys.stdout.flush()
            time.sleep(pause)
    for step in range(config.get("resume_from", 0) or steps + 1, steps + 1):
        sys.stdout.write(metric_line(step, 1.0 / step))
    sys.stdout.write("tunixops.metric not json\n")
    sys.stdout.write('prefix then tunixops.metric {"step": 999, "loss": 1}\n')
    sys.stdout.flush()
    time.sleep(config.get("sleep", 0.0))
    return int(config.get("exit_code", 0))


if __name__ == "__main__":
    sys.exit(main())
