"""`PrefixAffinityRouter`: Ray Serve's custom request-router API applied to prefix affinity.

Ray Serve creates one router per deployment handle, in the process that holds the handle (here
the gateway replica), and asks it `choose_replicas` for each pending request. The request's
first argument is a `RoutedRequest`, whose `prefix_keys` the gateway computed; `affinity.choose`
ranks the replicas. The router keeps its own count of requests in flight per replica (from
`on_request_routed` / `on_request_completed`), the larger of it and Ray's queue-length cache
being the load. Ray then sends the request to the first ranked replica that accepts it (one at
`max_ongoing_requests` refuses), trying the next ones in order.

A `RoutedRequest` naming a `replica` goes to that replica only (the gateway's fan-out of
/info and /metrics). The router publishes the replicas it currently sees, for those
fan-outs, through `registry` (Ray pickles this module by value: it keeps no state of its own).
"""

from __future__ import annotations

from typing import Any

from ray.serve.request_router import (
    PendingRequest,
    ReplicaID,
    RequestRouter,
    RunningReplica,
)

from fewshot.serving import registry
from fewshot.serving.affinity import PrefixTable, choose
from fewshot.serving.forward import RoutedRequest


def _routed(pending: PendingRequest | None) -> RoutedRequest | None:
    if pending is None:
        return None
    for arg in pending.args:
        if isinstance(arg, RoutedRequest):
            return arg
    return None


class PrefixAffinityRouter(RequestRouter):
    """Routes each prompt to the replica that served its longest prefix (see `affinity`)."""

    def initialize_state(self, imbalance: int = 4, max_entries: int = 65536, **_: Any) -> None:
        """`request_router_kwargs`: `imbalance`, how many more requests in flight the prefix's
        replica may have than the least-loaded one before the prefix is sent elsewhere;
        `max_entries`, prefix keys remembered."""
        self._imbalance = int(imbalance)
        self._table = PrefixTable(int(max_entries))
        self._inflight: dict[str, int] = {}
        self._routed: dict[str, str] = {}  # internal request id -> replica

    def _load(self, replica: RunningReplica) -> int:
        cached = self.replica_queue_len_cache.get(replica.replica_id) or 0
        return max(cached, self._inflight.get(replica.replica_id.unique_id, 0))

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        if pending_request is not None:
            # if no ranked replica accepts (all at max_ongoing_requests), Ray's routing loop
            # backs off before asking again
            pending_request.routing_context.should_backoff = True
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        request = _routed(pending_request)
        if request is not None and request.replica is not None:
            target = by_id.get(request.replica)
            return [[target]] if target is not None else []
        loads = {rid: self._load(r) for rid, r in by_id.items()}
        keys = request.prefix_keys if request is not None else []
        fallback = request.text_key if request is not None else None
        ranked, reason = choose(keys, fallback, loads, self._table, self._imbalance)
        if reason != "none":
            registry.count_decision(self.app_name, reason)
        return [[by_id[rid]] for rid in ranked]

    def on_request_routed(
        self, pending_request: PendingRequest, replica_id: ReplicaID, result: Any
    ) -> None:
        rid = replica_id.unique_id
        self._inflight[rid] = self._inflight.get(rid, 0) + 1
        self._routed[pending_request.metadata.internal_request_id] = rid
        request = _routed(pending_request)
        if request is not None and request.prefix_keys:
            self._table.record(request.prefix_keys, rid)

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        rid = self._routed.pop(internal_request_id, None)
        if rid is not None and self._inflight.get(rid, 0) > 0:
            self._inflight[rid] -= 1

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        super().update_replicas(replicas)
        live = sorted(r.replica_id.unique_id for r in replicas)
        for gone in set(self._inflight) - set(live):
            self._inflight.pop(gone, None)
            self._table.forget(gone)
        registry.publish(self.app_name, live)

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self._table.forget(replica_id.unique_id)
        self._inflight.pop(replica_id.unique_id, None)
        registry.discard(self.app_name, replica_id.unique_id)
