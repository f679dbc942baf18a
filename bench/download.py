"""Artifact download throughput and web-process memory, on loopback.

For one file (1 GiB by default) it prints, as the median of several runs:
- throughput of the in-app path (daphne streams it) and of the proxy path (daphne checks, nginx
  sends it via X-Accel-Redirect), each relative to nginx serving the same file straight from disk
  in the same run;
- the daphne process's peak RSS growth while a fast client and a slow (10 MB/s) client download.

The client is curl (a slow one is `curl --limit-rate`, stopped after --slow-seconds), so the
client is never the bottleneck. Everything runs on 127.0.0.1 against a scratch PostgreSQL
database and a temporary directory, both removed at the end.

    python bench/download.py [--size-mib 1024] [--runs 3] [--slow-seconds 15]
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import median, scratch_database, setup_django

from tests.artifacts.servers import Daphne, Nginx, direct_root_port

MIB = 1024 * 1024
SLOW_RATE = 10_000_000  # bytes per second


@dataclass
class Sample:
    seconds: float
    size: int
    peak_growth_mib: float = 0.0

    @property
    def mb_per_s(self) -> float:
        return self.size / self.seconds / 1e6


def curl(url: str, token: str | None, extra: list[str] | None = None) -> tuple[float, int]:
    argv = ["curl", "-s", "-o", "/dev/null", "-w", "%{time_total} %{size_download}"]
    if token:
        argv += ["-H", f"Authorization: Token {token}"]
    argv += [*(extra or []), url]
    out = subprocess.run(argv, capture_output=True, text=True, check=False)
    if out.returncode not in (0, 28):  # 28: --max-time reached, expected for the slow client
        raise RuntimeError(f"curl {url} failed ({out.returncode}): {out.stderr}")
    seconds, size = out.stdout.split()
    return float(seconds), int(size)


def measured(server: Daphne | None, url: str, token: str | None, extra: list[str]) -> Sample:
    """One download; with a daphne, also its peak RSS growth over the RSS just before."""
    if server is None:
        return Sample(*curl(url, token, extra))
    server.reset_peak_rss()
    before = server.rss_kib()
    seconds, size = curl(url, token, extra)
    return Sample(seconds, size, (server.peak_rss_kib() - before) / 1024)


def write_file(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    block = os.urandom(16 * MIB)
    with path.open("wb") as handle:
        for offset in range(0, size, len(block)):
            handle.write(block[: size - offset])


def prepare(env: dict[str, str], root: Path, size: int) -> tuple[str, str, str]:
    """A user's token, a run with the file registered; returns (token, download path, name)."""
    setup_django(env)
    from django.contrib.auth.models import User
    from rest_framework.authtoken.models import Token

    from artifacts.models import Artifact
    from artifacts.services import artifacts_sync
    from runs.models import Run

    user = User.objects.create_user(username="bench")
    token = Token.objects.create(user=user).key
    run = Run.objects.create(recipe="tiny_sft", timeout_seconds=60, created_by=user)
    name = "checkpoints/100/model_params/d/weights.bin"
    write_file(root / str(run.pk) / name, size)
    (root / str(run.pk) / "checkpoints/100/commit_success.txt").write_text("ok")
    artifacts_sync(run_id=run.pk)
    artifact = Artifact.objects.get(run=run, name=name)
    return token, f"/api/tunix/runs/{run.pk}/artifacts/{artifact.pk}/download", f"{run.pk}/{name}"


def warm(url: str, token: str | None) -> None:
    curl(url, token, ["-r", "0-1048575"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--slow-seconds", type=float, default=15.0)
    parser.add_argument(
        "--app", default="tunixops.asgi:application", help="ASGI application daphne serves"
    )
    args = parser.parse_args()
    if (
        shutil.which("curl") is None
        or not Path(shutil.which("nginx") or "/usr/sbin/nginx").exists()
    ):
        sys.exit("needs curl and nginx (scripts/system-deps installs nginx)")

    with tempfile.TemporaryDirectory(prefix="bench-download-") as tmp_name:
        tmp = Path(tmp_name)
        with scratch_database(tmp) as env:
            root = tmp / "artifacts"
            token, path, name = prepare(env, root, args.size_mib * MIB)
            env = {**env, "LOG_LEVEL": "WARNING"}
            app = Daphne(env=env, workdir=tmp, app=args.app)
            proxied_web = Daphne(
                env={**env, "TUNIX_DOWNLOAD_BACKEND": "nginx"}, workdir=tmp, app=args.app
            )
            with app, proxied_web:
                proxy = Nginx(
                    upstream_port=proxied_web.port,
                    artifact_root=root,
                    workdir=tmp / "nginx",
                    direct_root=root,
                )
                with proxy:
                    report(args, app, proxied_web, proxy, token, path, name)


def report(
    args: argparse.Namespace,
    app: Daphne,
    proxied_web: Daphne,
    proxy: Nginx,
    token: str,
    path: str,
    name: str,
) -> None:
    direct_url = f"http://127.0.0.1:{direct_root_port(proxy.port)}/{name}"
    app_url = f"{app.base_url}{path}"
    proxy_url = f"{proxy.base_url}{path}"
    for url, auth in ((direct_url, None), (app_url, token), (proxy_url, token)):
        warm(url, auth)

    fast: dict[str, list[Sample]] = {"direct": [], "app": [], "proxy": []}
    for _ in range(args.runs):
        fast["direct"].append(measured(None, direct_url, None, []))
        fast["app"].append(measured(app, app_url, token, []))
        fast["proxy"].append(measured(proxied_web, proxy_url, token, []))
    slow_args = ["--limit-rate", str(SLOW_RATE), "--max-time", str(args.slow_seconds)]
    slow: dict[str, list[Sample]] = {"app": [], "proxy": []}
    for _ in range(args.runs):
        slow["app"].append(measured(app, app_url, token, slow_args))
        slow["proxy"].append(measured(proxied_web, proxy_url, token, slow_args))

    direct_rate = median([s.mb_per_s for s in fast["direct"]])
    size_mib = fast["direct"][0].size / MIB
    print(
        f"download of a {size_mib:.0f} MiB file on loopback, median of {args.runs} runs, "
        f"daphne serving {args.app}"
    )
    print(f"{'path':<34}{'MB/s':>9}{'vs nginx':>10}{'daphne peak RSS growth':>26}")
    print(f"{'nginx direct (static file)':<34}{direct_rate:>9.0f}{'1.00x':>10}{'-':>26}")
    for key, label in (("app", "in-app (daphne streams)"), ("proxy", "proxy (X-Accel-Redirect)")):
        rate = median([s.mb_per_s for s in fast[key]])
        growth = median([s.peak_growth_mib for s in fast[key]])
        print(f"{label:<34}{rate:>9.0f}{rate / direct_rate:>9.2f}x{growth:>22.1f} MiB")
    for key, label in (("app", "in-app, 10 MB/s client"), ("proxy", "proxy, 10 MB/s client")):
        rate = median([s.mb_per_s for s in slow[key]])
        growth = median([s.peak_growth_mib for s in slow[key]])
        got = median([s.size for s in slow[key]]) / MIB
        print(
            f"{label:<34}{rate:>9.1f}{'':>10}{growth:>22.1f} MiB"
            f"   ({got:.0f} MiB in {args.slow_seconds:.0f} s)"
        )


if __name__ == "__main__":
    start = time.monotonic()
    main()
    print(f"bench took {time.monotonic() - start:.0f} s")
