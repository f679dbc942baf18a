"""The entry point of a run's Ray job: runs the recipe's command and ships its output by file.

Self-contained (the standard library only, no TunixOps import): the worker copies this file into
the run's control directory on the shared storage, and Ray starts it there, so the cluster needs
none of TunixOps' code to run it.

    python ray_job.py CONTROL_DIR GRACE_SECONDS -- ARGV...

It first checks that it sees the control directory the worker wrote (`launch` holds the token the
worker also passes in `TUNIX_RAY_LAUNCH_TOKEN`): a node that does not share the worker's storage
exits with status 97 at once, saying so on Ray's own log. Then it starts ARGV in a session of its
own and appends every line of its stdout and stderr to `CONTROL_DIR/output` as one record:

    <stream: o or e><kind: L a whole line, P a piece without its newline><bytes>\\n

The bytes hold no newline (a line's own is implied by L), so a record always ends at the first
newline: the worker reads only complete records and remembers how many bytes it has stored. A
line longer than PIECE_BYTES is written in pieces.

Stopping: SIGTERM (Ray's `stop_job`) or a `stop` file goes to the command's whole process group
as SIGTERM; GRACE_SECONDS later, or at once when a `kill` file appears, the group gets SIGKILL.
A job stopped before Ray started it (it waited for resources) exits at once without running
the command. After the command ends, what is left of its group is killed too. Last, `exit` is
written (by a rename, so it is whole when seen): `{"code": status, "output_bytes": size of
output}`, status negative for a death by signal. The job's own exit status is the command's
(128 + signal).
"""

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time

PIECE_BYTES = 64 * 1024
READ_BYTES = 65536
NOT_SHARED = 97
POLL_SECONDS = 0.02
READERS_JOIN_SECONDS = 10.0
PR_SET_PDEATHSIG = 1


class Output:
    """The append-only record file, shared by the two pipe readers."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.lock = threading.Lock()

    def write(self, records: list[bytes]) -> None:
        data = b"".join(records)
        with self.lock:
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view) :]

    def size(self) -> int:
        return os.fstat(self.fd).st_size


def records(stream: bytes, pending: bytearray, data: bytes, final: bool) -> list[bytes]:
    """Whole lines (and over-long pieces) of `pending + data` as records; the rest stays."""
    pending += data
    out: list[bytes] = []
    start = 0
    while True:
        end = pending.find(b"\n", start)
        if end < 0:
            break
        line = bytes(pending[start:end])
        while len(line) > PIECE_BYTES:
            out.append(stream + b"P" + line[:PIECE_BYTES] + b"\n")
            line = line[PIECE_BYTES:]
        out.append(stream + b"L" + line + b"\n")
        start = end + 1
    del pending[:start]
    while len(pending) >= PIECE_BYTES or (final and pending):
        piece = bytes(pending[:PIECE_BYTES])
        out.append(stream + b"P" + piece + b"\n")
        del pending[:PIECE_BYTES]
    return out


def pump(fd: int, stream: bytes, output: Output) -> None:
    pending = bytearray()
    while data := os.read(fd, READ_BYTES):
        output.write(records(stream, pending, data, final=False))
    output.write(records(stream, pending, b"", final=True))
    os.close(fd)


def die_with_parent() -> None:
    # Runs in the child between fork and exec (no thread is started yet): if Ray kills this
    # wrapper outright, the command (in a session of its own, out of Ray's reach) dies too.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def kill_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def write_exit(control: str, code: int, output: Output) -> None:
    path = os.path.join(control, "exit")
    # No fsync: the worker reads it through the same file system, and a node that crashes
    # before it reaches the disk has no job left to report on anyway.
    with open(path + ".tmp", "w") as handle:
        json.dump({"code": code, "output_bytes": output.size()}, handle)
    os.replace(path + ".tmp", path)


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[2] != "--":
        print("usage: ray_job.py CONTROL_DIR GRACE_SECONDS -- ARGV...", file=sys.stderr)
        return 2
    control, grace, command = argv[0], float(argv[1]), argv[3:]
    token = os.environ.get("TUNIX_RAY_LAUNCH_TOKEN", "")
    try:
        with open(os.path.join(control, "launch")) as handle:
            seen = handle.read().strip()
    except OSError as exc:
        seen = f"unreadable ({exc})"
    if not token or seen != token:
        print(
            f"[tunixops] this Ray node does not see the worker's run directory: {control}/launch "
            f"is {seen!r}, not the worker's token. The run directory must be on storage the "
            "workers and every Ray node mount at the same path (TUNIX_ARTIFACT_ROOT).",
            flush=True,
        )
        return NOT_SHARED

    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.set())
    output = Output(os.path.join(control, "output"))
    if any(os.path.exists(os.path.join(control, name)) for name in ("stop", "kill")):
        # Stopped before Ray started it (it waited for resources): the command never runs.
        write_exit(control, -signal.SIGTERM, output)
        return 128 + signal.SIGTERM
    try:
        child = subprocess.Popen(
            command,
            cwd=os.environ.get("TUNIX_RUN_DIR") or None,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
    except OSError as exc:
        output.write([b"eL[tunixops] run could not start: " + str(exc).encode() + b"\n"])
        write_exit(control, 127, output)
        return 127
    assert child.stdout is not None and child.stderr is not None
    readers = [
        threading.Thread(target=pump, args=(child.stdout.fileno(), b"o", output), daemon=True),
        threading.Thread(target=pump, args=(child.stderr.fileno(), b"e", output), daemon=True),
    ]
    for reader in readers:
        reader.start()
    kill_at: float | None = None
    while child.poll() is None:
        if kill_at is None and (stopping.is_set() or os.path.exists(f"{control}/stop")):
            kill_group(child.pid, signal.SIGTERM)
            kill_at = time.monotonic() + grace
        killed = kill_at == float("inf")
        if not killed and (
            os.path.exists(f"{control}/kill")
            or (kill_at is not None and time.monotonic() >= kill_at)
        ):
            kill_group(child.pid, signal.SIGKILL)
            kill_at = float("inf")
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(POLL_SECONDS)
    # Whatever the command left in its group (a grandchild) goes with it.
    kill_group(child.pid, signal.SIGKILL)
    for reader in readers:
        # A process that left the group may still hold a pipe: its output is not waited for.
        reader.join(READERS_JOIN_SECONDS)
    code = child.returncode
    write_exit(control, code, output)
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
