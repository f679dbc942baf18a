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

# Output the database cannot store as sent: a NUL byte, and metric lines whose JSON escapes spell a
# NUL or a lone surrogate (plain ASCII on the wire). `refused` is stored fine, but the reliability
# tests install a trigger that refuses any chunk containing it.
POISON = {
    "nul": "A\x00B\n",
    "metric_nul": 'tunixops.metric {"step": 1, "loss": 1.5, "evil\\u0000name": 2.0}\n',
    "metric_surrogate": 'tunixops.metric {"step": 2, "loss": 1.25, "\\ud800": 3.0}\n',
    "refused": "REFUSED-BY-TRIGGER\n",
}


ENV_SHOWN = (
    "CUDA_VISIBLE_DEVICES",
    "XLA_PYTHON_CLIENT_PREALLOCATE",
    "TPU_VISIBLE_CHIPS",
    "TPU_CHIPS_PER_PROCESS_BOUNDS",
    "TPU_PROCESS_BOUNDS",
    "TPU_MESH_CONTROLLER_PORT",
    "JAX_PLATFORMS",
    "SECRET_KEY",
    "DATABASE_URL",
    "TUNIX_RUN_ID",
    "RECIPE_RAY_VAR",
)


def daemonize(pid_file: str) -> None:
    """Leave the run's process group the way daemons do: fork, setsid, fork again."""
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            Path(pid_file).write_text(str(os.getpid()))
            time.sleep(600)
            os._exit(0)
        os._exit(0)
    os.wait()


def probe_access(target: str) -> None:
    """Print what this child can do to what is not its own: the worker's environment, a path."""
    try:
        environ = Path(f"/proc/{os.getppid()}/environ").read_bytes()
        print(f"worker environ readable: {len(environ)} bytes")
    except OSError as exc:
        print(f"worker environ refused: {exc.strerror}")
    try:
        Path(target, "intruder.txt").write_text("x")
        print("foreign write allowed")
    except OSError as exc:
        print(f"foreign write refused: {exc.strerror}")
    print(f"uid {os.getuid()}")


def main() -> int:
    config = json.loads(Path(sys.argv[1]).read_text())
    if config.get("print_env"):
        for name in ENV_SHOWN:
            print(f"{name}={os.environ.get(name, '<unset>')}")
        sys.stdout.flush()
    if config.get("daemon_pid_file"):
        daemonize(config["daemon_pid_file"])
    if config.get("probe_path"):
        probe_access(config["probe_path"])
        sys.stdout.flush()
    if config.get("alloc_mb"):
        hog = bytearray(config["alloc_mb"] * 2**20)
        for i in range(0, len(hog), 4096):  # touch every page, so it is really resident
            hog[i] = 1
    if config.get("ignore_sigterm"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if config.get("grandchild"):
        grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        Path("grandchild.pid").write_text(str(grandchild.pid))
    for i in range(config.get("files", 0)):
        Path(f"out/file-{i}.bin").parent.mkdir(exist_ok=True)
        Path(f"out/file-{i}.bin").write_bytes(os.urandom(1024) * (i + 1))
    if config.get("poison"):
        sys.stdout.write(POISON[config["poison"]])
        sys.stdout.flush()
    for step in range(1, config.get("metric_steps", 0) + 1):
        print(f'tunixops.metric {{"step": {step}, "loss": {1.0 / step}}}', flush=True)
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
