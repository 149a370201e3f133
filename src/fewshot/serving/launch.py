"""Build the Ray Serve application from `Settings`, and run it for `fewshot serve --replicas N`.

    app = build_app(settings)          # Gateway -> Engine x N, prefix-affinity router
    with serving(settings) as url:     # Ray (local, or joined), Serve's proxy on host:port
        ...

`app_builder` is the import path for a Ray Serve config file (KubeRay `RayService`):
`import_path: fewshot.serving.launch:app_builder`, `args:` any Settings fields.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
from collections.abc import Iterator
from typing import Any

from ray import serve
from ray.serve.config import RequestRouterConfig

from fewshot.serving.deployments import Engine, Gateway
from fewshot.serving.router import PrefixAffinityRouter
from fewshot.settings import Settings, available_cores

log = logging.getLogger("fewshot.serving")

APP_NAME = "fewshot"


def engine_options(settings: Settings) -> dict[str, Any]:
    """Ray Serve options of the Engine deployment: replicas or autoscaling, resources, router,
    admission (Ray queues beyond `max_concurrent_requests` per replica) and drain time."""
    s = settings
    router = RequestRouterConfig()  # Ray's default (power of two choices)
    if s.router == "prefix":
        router = RequestRouterConfig(
            request_router_class=PrefixAffinityRouter,
            request_router_kwargs={"imbalance": s.affinity_imbalance},
        )
    options: dict[str, Any] = {
        "name": "Engine",
        "ray_actor_options": {"num_cpus": s.replica_cpus},
        "max_ongoing_requests": s.max_concurrent_requests,
        "graceful_shutdown_timeout_s": s.drain_timeout_s,
        "request_router_config": router,
    }
    if s.min_replicas is not None or s.max_replicas is not None:
        low = s.min_replicas if s.min_replicas is not None else 1
        high = s.max_replicas if s.max_replicas is not None else max(low, s.replicas or 1)
        autoscaling: dict[str, Any] = {"min_replicas": low, "max_replicas": high}
        if s.replicas is not None:
            autoscaling["initial_replicas"] = s.replicas
        if s.target_ongoing_requests is not None:
            autoscaling["target_ongoing_requests"] = s.target_ongoing_requests
        options["autoscaling_config"] = autoscaling
    else:
        options["num_replicas"] = s.replicas or 1
    return options


def replica_settings(settings: Settings) -> Settings:
    """Settings for each replica: torch threads default to the replica's CPUs, not every core
    of the machine (N replicas share it)."""
    if "threads" in settings.model_fields_set:
        return settings
    return settings.model_copy(update={"threads": max(1, int(settings.replica_cpus))})


def build_app(settings: Settings) -> Any:
    """The application: one Gateway (no CPU reserved) in front of the Engine replicas."""
    settings = replica_settings(settings)
    engine = serve.deployment(Engine).options(**engine_options(settings)).bind(settings)
    gateway = serve.deployment(Gateway).options(
        name="Gateway",
        num_replicas=1,
        max_ongoing_requests=max(1000, 4 * settings.max_concurrent_requests),
        ray_actor_options={"num_cpus": 0},
    )
    return gateway.bind(engine, settings)


def app_builder(args: dict[str, Any]) -> Any:
    """Ray Serve application builder (config files): `args` are Settings fields."""
    return build_app(Settings(**args))


@contextlib.contextmanager
def serving(settings: Settings, *, num_cpus: float | None = None) -> Iterator[str]:
    """Run the application behind Ray Serve's proxy on settings.host:port; yield its URL.

    Uses the Ray this process already joined, else joins `settings.ray_address`, else starts
    a local Ray (stopped on exit, with `num_cpus` logical CPUs, by default enough for the
    replicas). On exit the application is deleted, which drains the requests in flight
    (`drain_timeout_s`); Serve itself is shut down only when it ran on our own local Ray."""
    import ray

    own_ray = not ray.is_initialized()
    if not own_ray:
        pass  # the caller's Ray (tests, notebooks): neither started nor stopped here
    elif settings.ray_address is None:
        wanted = (settings.max_replicas or settings.replicas or 1) * settings.replica_cpus
        cpus = num_cpus if num_cpus is not None else max(available_cores(), math.ceil(wanted))
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    else:
        ray.init(address=settings.ray_address, log_to_driver=False)
    own_serve = own_ray and settings.ray_address is None
    try:
        serve.start(http_options={"host": settings.host, "port": settings.port})
        serve.run(build_app(settings), name=APP_NAME, route_prefix="/")
        yield f"http://{settings.host}:{settings.port}"
    finally:
        with contextlib.suppress(Exception):
            serve.delete(APP_NAME)
        if own_serve:
            with contextlib.suppress(Exception):
                serve.shutdown()
        if own_ray:
            ray.shutdown()


def run(settings: Settings) -> int:
    """`fewshot serve --replicas N`: serve until SIGINT / SIGTERM, then drain and stop."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with serving(settings) as url:
        mode = (
            f"{settings.min_replicas}-{settings.max_replicas} replicas (autoscaling)"
            if settings.min_replicas is not None or settings.max_replicas is not None
            else f"{settings.replicas or 1} replicas"
        )
        log.info("serving on %s: %s, %s router", url, mode, settings.router)
        stop.wait()
        log.info("stopping: draining requests in flight (up to %.0fs)", settings.drain_timeout_s)
    return 0
