"""Which endings of an attempt start another one (while the run has attempts left).

A recipe (and a run, overriding it) lists rules; an attempt that ends in a way a rule names is
retried after a backoff instead of ending the run:

- `exit:N`: the job exited with status N. A death by signal S also matches `exit:<128+S>`, the
  shell's way of writing it (so `exit:137` is a SIGKILL, whatever killed it).
- `signal` or `signal:N`: the job was killed by a signal (any, or that one).
- `oom`: it was killed for exceeding its memory limit.
- `timeout`: it ran past its timeout.
- `worker_lost`: its worker stopped renewing the lease (crashed, lost its host), or its Ray job
  was lost with its cluster (the head restarted, or stopped answering).

A worker shutting down always puts its runs back while attempts remain: that is no failure of the
run. A cancel is never retried.
"""

import re
from collections.abc import Iterable, Sequence

RULE = re.compile(r"^(exit:(?:[0-9]{1,3})|signal(?::[0-9]{1,2})?|oom|timeout|worker_lost)$")
MAX_RULES = 20
# The backoff of the n-th retry is base * 2**(n-1), at most this.
MAX_BACKOFF_SECONDS = 3600.0
DEFAULT = ("worker_lost",)


def default_rules() -> list[str]:
    """A run's rules when nothing says otherwise: only a lost worker is retried."""
    return list(DEFAULT)


def invalid_rules(rules: object) -> str | None:
    """Why `rules` is not a list of retry rules, or None when it is."""
    if not isinstance(rules, list | tuple) or len(rules) > MAX_RULES:
        return f"must be a list of at most {MAX_RULES} rules"
    for rule in rules:
        if not isinstance(rule, str) or not RULE.match(rule):
            return (
                f"unknown rule {rule!r}: use exit:N, signal, signal:N, oom, timeout or worker_lost"
            )
        if rule.startswith("exit:") and int(rule[5:]) > 255:
            return f"{rule!r}: an exit status is 0 to 255"
    return None


def endings(
    *, exit_code: int | None, timed_out: bool = False, oom: bool = False, lost: bool = False
) -> set[str]:
    """The rule names an attempt's ending matches. A timeout matches only `timeout`: the signal
    that ended it was ours, not the job's own failure. A Ray job lost with its cluster matches
    only `worker_lost`: like a lost worker, the job did not fail by itself."""
    if timed_out:
        return {"timeout"}
    if lost:
        return {"worker_lost"}
    names: set[str] = set()
    if oom:
        names.add("oom")
    if exit_code is not None and exit_code < 0:
        names |= {"signal", f"signal:{-exit_code}", f"exit:{128 - exit_code}"}
    elif exit_code is not None:
        names.add(f"exit:{exit_code}")
    return names


def matching(rules: Iterable[str], names: set[str]) -> str | None:
    """The first rule that matches, or None."""
    return next((rule for rule in rules if rule in names), None)


def backoff_seconds(base: float, retry: int) -> float:
    """Seconds to wait before the `retry`-th retry (1 for the first)."""
    return float(min(base * 2 ** max(retry - 1, 0), MAX_BACKOFF_SECONDS))


def describe(rules: Sequence[str]) -> str:
    return ", ".join(rules) or "nothing"
