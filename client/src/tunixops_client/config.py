"""Where the client finds its server and token: flags, then environment, then the config file.

The file is `$XDG_CONFIG_HOME/tunixops/config.json` (`~/.config/tunixops/config.json`), or the
path in `TUNIXOPS_CONFIG`. It holds a secret, so it must belong to the user and be readable by
nobody else: a group- or world-readable file is refused, never silently used.
"""

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from tunixops_client.errors import ConfigurationError

ENV_URL = "TUNIXOPS_URL"
ENV_TOKEN = "TUNIXOPS_TOKEN"  # noqa: S105 (the name of the variable, not a token)
ENV_CONFIG = "TUNIXOPS_CONFIG"


@dataclass(frozen=True)
class Settings:
    url: str
    token: str


def config_path() -> Path:
    explicit = os.environ.get(ENV_CONFIG)
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "tunixops" / "config.json"


def read_config(path: Path | None = None) -> dict[str, str]:
    """The file's `url` and `token`, or nothing when there is no file."""
    path = path or config_path()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigurationError(f"cannot read {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigurationError(
                f"{path} is readable by others (mode {stat.S_IMODE(info.st_mode):o}); it holds "
                f"your token. Run: chmod 600 {path}"
            )
        if hasattr(os, "getuid") and info.st_uid != os.getuid():
            raise ConfigurationError(f"{path} belongs to another user; refusing to use it")
        raw = handle.read(1 << 20)
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ConfigurationError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigurationError(f"{path} must hold a JSON object")
    return {k: v for k, v in data.items() if k in ("url", "token") and isinstance(v, str)}


def write_config(url: str, token: str, path: Path | None = None) -> Path:
    """Save the server and token readable by the user alone (the directory too), atomically."""
    path = path or config_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump({"url": url, "token": token}, handle, indent=2)
            handle.write("\n")
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return path


def resolve(url: str | None = None, token: str | None = None) -> Settings:
    """Flags win over the environment, which wins over the config file."""
    url = url or os.environ.get(ENV_URL) or None
    token = token or os.environ.get(ENV_TOKEN) or None
    if url is None or token is None:
        saved = read_config()
        url = url or saved.get("url")
        token = token or saved.get("token")
    if not url:
        raise ConfigurationError(
            f"no server URL: pass --url, set {ENV_URL}, or run `tunixops login --url URL`"
        )
    if not token:
        raise ConfigurationError(
            f"no API token: pass --token, set {ENV_TOKEN}, or run `tunixops login`"
        )
    return Settings(url=normalise_url(url), token=token)


def normalise_url(url: str) -> str:
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ConfigurationError(f"server URL must start with http:// or https://, not {url!r}")
    return url
