"""What the API returns, as small typed records; `data` keeps the whole answer."""

import math
from dataclasses import dataclass, field
from typing import Any

TERMINAL = ("completed", "failed", "timeout", "cancelled")

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


@dataclass(frozen=True)
class Run:
    id: str
    status: str
    recipe: str
    name: str
    status_reason: str
    exit_code: int | None
    created_by: str | None
    created_at: str
    data: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> "Run":
        return cls(
            id=str(data["id"]),
            status=str(data["status"]),
            recipe=str(data.get("recipe", "")),
            name=str(data.get("name", "")),
            status_reason=str(data.get("status_reason") or ""),
            exit_code=data.get("exit_code"),
            created_by=data.get("created_by"),
            created_at=str(data.get("created_at", "")),
            data=data,
        )

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


@dataclass(frozen=True)
class RunStatus:
    """`GET /runs/{id}/status`, and the `status` events of a followed log."""

    status: str
    status_reason: str = ""
    exit_code: int | None = None
    finished_at: str | None = None
    data: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> "RunStatus":
        return cls(
            status=str(data["status"]),
            status_reason=str(data.get("status_reason") or ""),
            exit_code=data.get("exit_code"),
            finished_at=data.get("finished_at"),
            data=data,
        )

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


@dataclass(frozen=True)
class LogLine:
    """One line of a run's output. `seq` is its chunk's; `complete` is False for a line the
    capture stored without its newline (the end of a partial write)."""

    seq: int
    stream: str
    text: str
    complete: bool = True

    def __str__(self) -> str:
        return self.text + ("\n" if self.complete else "")


@dataclass(frozen=True)
class MetricPoint:
    step: int
    values: dict[str, float | None]


@dataclass(frozen=True)
class ConfigKey:
    name: str
    type: str
    default: Any = None
    min: float | None = None
    max: float | None = None
    choices: tuple[Any, ...] = ()
    help: str = ""

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> "ConfigKey":
        return cls(
            name=str(data["name"]),
            type=str(data["type"]),
            default=data.get("default"),
            min=data.get("min"),
            max=data.get("max"),
            choices=tuple(data.get("choices") or ()),
            help=str(data.get("help") or ""),
        )

    def parse(self, text: str) -> Any:
        """The command line's text as this key's type; ValueError with a message otherwise."""
        if self.type == "str":
            return text
        if self.type == "bool":
            lowered = text.strip().lower()
            if lowered in _TRUE:
                return True
            if lowered in _FALSE:
                return False
            raise ValueError(f"{text!r} is not a boolean (true or false)")
        if self.type == "int":
            try:
                return int(text.strip().replace("_", ""))
            except ValueError:
                raise ValueError(f"{text!r} is not an integer") from None
        if self.type == "float":
            try:
                value = float(text)
            except ValueError:
                raise ValueError(f"{text!r} is not a number") from None
            if not math.isfinite(value):
                raise ValueError(f"{text!r} is not a finite number")
            return value
        raise ValueError(f"unknown type {self.type!r}")

    def describe(self) -> str:
        bounds = ""
        if self.min is not None or self.max is not None:
            lo = "" if self.min is None else f"{self.min:g}"
            hi = "" if self.max is None else f"{self.max:g}"
            bounds = f" {lo}..{hi}"
        default = "" if self.default is None else f" (default {self.default})"
        return f"{self.name}: {self.type}{bounds}{default}"


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    default_model_id: str
    keys: dict[str, ConfigKey]

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> "Recipe":
        keys = [ConfigKey.from_api(k) for k in data.get("config") or []]
        return cls(
            name=str(data["name"]),
            description=str(data.get("description") or ""),
            default_model_id=str(data.get("default_model_id") or ""),
            keys={k.name: k for k in keys},
        )

    def typed_config(self, settings: dict[str, str]) -> dict[str, Any]:
        """`{"max_steps": "20"}` -> `{"max_steps": 20}`; errors name the field the API's way."""
        from tunixops_client.errors import InvalidInput

        config: dict[str, Any] = {}
        errors: dict[str, list[str]] = {}
        for name, text in settings.items():
            key = self.keys.get(name)
            if key is None:
                allowed = ", ".join(self.keys) or "none"
                errors[f"config.{name}"] = [
                    f"unknown key for recipe {self.name!r} (allowed: {allowed})"
                ]
                continue
            try:
                config[name] = key.parse(text)
            except ValueError as exc:
                errors[f"config.{name}"] = [str(exc)]
        if errors:
            raise InvalidInput(0, "invalid", "Invalid settings.", errors)
        return config


@dataclass(frozen=True)
class Artifact:
    id: int
    name: str
    size_bytes: int
    sha256: str
    step: int | None
    created_at: str

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> "Artifact":
        return cls(
            id=int(data["id"]),
            name=str(data["name"]),
            size_bytes=int(data["size_bytes"]),
            sha256=str(data["sha256"]),
            step=data.get("step"),
            created_at=str(data.get("created_at", "")),
        )


@dataclass(frozen=True)
class Download:
    artifact: Artifact
    path: str
    resumed_from: int  # bytes already on disk from an earlier, interrupted download
    skipped: bool  # the file was already there with the right sha256


@dataclass(frozen=True)
class PushResult:
    traces: int  # pushed by this call
    batches: int
    last_line: int  # the last line of the file that is now on the server (or was skipped)
    ids: list[int] = field(default_factory=list, repr=False)
