"""A configurable test child: prints, sleeps, floods, writes files, spawns, ignores SIGTERM.

Reads the run's config.json (first argument) and does what its keys say, in this order.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def main() -> int:
    config = json.loads(Path(sys.argv[1]).read_text())
    if config.get("ignore_sigterm"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if config.get("grandchild"):
        grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        Path("grandchild.pid").write_text(str(grandchild.pid))
    for i in range(config.get("files", 0)):
        Path(f"out/file-{i}.bin").parent.mkdir(exist_ok=True)
        Path(f"out/file-{i}.bin").write_bytes(os.urandom(1024) * (i + 1))
    lines = config.get("lines", 0)
    rate = config.get("rate", 0)
    width = config.get("width", 0)
    pad = "x" * width
    out = sys.stdout
    start = time.monotonic()
    for i in range(1, lines + 1):
        if config.get("stamp"):
            out.write(f"line {i} t={time.time():.6f}\n")
        else:
            out.write(f"line {i}{' ' + pad if pad else ''}\n")
        if rate:
            out.flush()
            ahead = i / rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
    out.flush()
    for i in range(config.get("stderr_lines", 0)):
        sys.stderr.write(f"err {i + 1}\n")
    sys.stderr.flush()
    if config.get("flood_bytes"):
        block = ("y" * 99 + "\n") * 655
        remaining = config["flood_bytes"]
        while remaining > 0:
            out.write(block[:remaining])
            remaining -= len(block)
        out.flush()
    if config.get("partial"):
        out.write(config["partial"])
        out.flush()
    if config.get("long_line"):
        out.write("z" * config["long_line"] + "\n")
        out.flush()
    if config.get("ready_file"):
        Path(config["ready_file"]).write_text("ready")
    time.sleep(config.get("sleep", 0))
    return int(config.get("exit_code", 0))


if __name__ == "__main__":
    sys.exit(main())
