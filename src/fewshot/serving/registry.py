"""The engine replicas a process's router currently routes over, by application name.

`PrefixAffinityRouter` publishes its replica set here; the gateway, in the same process,
reads it to fan /info and /metrics out to every replica. (Not in the router's module: Ray
pickles a router class *by value*, module globals included, so a dict there would be a copy.)
"""

from __future__ import annotations

import threading

_lock = threading.Lock()
_replicas: dict[str, list[str]] = {}


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
