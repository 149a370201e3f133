"""Scale-out of the API on Ray Serve: `fewshot serve --replicas N`.

- `affinity`: prompt -> chained block hashes, and the prefix-affinity choice (pure, no Ray).
- `router`: the Ray Serve `RequestRouter` that applies it; `registry`: the replicas it sees,
  for the gateway in the same process.
- `forward`: one HTTP request as a picklable value, the prompt it carries, and an in-process
  ASGI call of the API app for it.
- `deployments`: the `Gateway` (HTTP ingress) and `Engine` (one API app per replica)
  deployments; `replica_metrics`: /metrics of every replica merged.
- `launch`: build the Ray Serve application from `Settings` and run it.

Ray is an optional dependency (`pip install fewshot[ray]`); only `launch` and the modules it
loads import it.
"""
