"""What a process's router knows, by application name, for the gateway in the same process:
the engine replicas it currently routes over (to fan /info and /metrics out to every
replica) and how many requests it routed for each reason (`affinity.choose`), exported on
/metrics as `fewshot_router_decisions_total`. (Not in the router's module: Ray
pickles a router class *by value*, module globals included, so a dict there would be a copy.)
"""

from __future__ import annotations

import threading

_lock = threading.Lock()
_replicas: dict[str, list[str]] = {}
_decisions: dict[str, dict[str, int]] = {}


def publish(app_name: str, replica_ids: list[str]) -> None:
    with _lock:
        _replicas[app_name] = sorted(replica_ids)


def discard(app_name: str, replica_id: str) -> None:
    with _lock:
        _replicas[app_name] = [r for r in _replicas.get(app_name, []) if r != replica_id]


def replica_ids(app_name: str) -> list[str]:
    """The replicas of `app_name` this process's router sees (empty before its first request)."""
    with _lock:
        return list(_replicas.get(app_name, ()))


def count_decision(app_name: str, reason: str) -> None:
    with _lock:
        counts = _decisions.setdefault(app_name, {})
        counts[reason] = counts.get(reason, 0) + 1


def decisions(app_name: str) -> dict[str, int]:
    """Requests routed so far, by reason."""
    with _lock:
        return dict(_decisions.get(app_name, {}))


def decisions_exposition(app_name: str) -> str:
    """The routing decisions in Prometheus' text format."""
    lines = [
        "# HELP fewshot_router_decisions_total Requests the prefix-affinity router placed, by "
        "reason (held: on a replica holding the prefix; new: an unseen prefix; spilled: its "
        "replicas were too busy; unkeyed: no prompt)",
        "# TYPE fewshot_router_decisions_total counter",
    ]
    for reason, n in sorted(decisions(app_name).items()):
        lines.append(f'fewshot_router_decisions_total{{reason="{reason}"}} {float(n)}')
    return "\n".join(lines) + "\n"
