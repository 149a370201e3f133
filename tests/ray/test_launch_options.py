"""`fewshot serve` scale-out flags -> Settings -> Ray Serve deployment options (no Ray started)."""

from __future__ import annotations

import pytest

pytest.importorskip("ray")

from fewshot.cli import build_parser  # noqa: E402
from fewshot.cli.serve import settings_from_args, uses_ray  # noqa: E402
from fewshot.serving.launch import engine_options, replica_settings  # noqa: E402
from fewshot.serving.router import PrefixAffinityRouter  # noqa: E402
from fewshot.settings import Settings  # noqa: E402


def _settings(*flags: str):
    return settings_from_args(build_parser().parse_args(["serve", "--model", "m", *flags]))


def test_replicas_and_router() -> None:
    s = _settings("--replicas", "3", "--replica-cpus", "2", "--ray-address", "head:6379")
    assert uses_ray(s) and s.ray_address == "head:6379"
    options = engine_options(s)
    assert options["num_replicas"] == 3 and "autoscaling_config" not in options
    assert options["ray_actor_options"] == {"num_cpus": 2.0}
    router = options["request_router_config"]
    assert router.request_router_class.endswith(PrefixAffinityRouter.__name__)
    assert replica_settings(s).threads == 2  # torch threads follow the replica's CPUs
    assert replica_settings(_settings("--replicas", "2", "--threads", "4")).threads == 4
    default = engine_options(_settings("--replicas", "2", "--router", "default"))
    assert "PowerOfTwo" in default["request_router_config"].request_router_class
    assert not uses_ray(_settings())


def test_autoscaling_passes_through() -> None:
    s = _settings(
        "--min-replicas", "1", "--max-replicas", "4", "--target-ongoing-requests", "6",
        "--replicas", "2", "--drain-timeout-s", "9",
    )  # fmt: skip
    options = engine_options(s)
    assert options["autoscaling_config"] == {
        "min_replicas": 1,
        "max_replicas": 4,
        "initial_replicas": 2,
        "target_ongoing_requests": 6.0,
    }
    assert "num_replicas" not in options and options["graceful_shutdown_timeout_s"] == 9.0


def test_unknown_router_is_refused() -> None:
    with pytest.raises(SystemExit):  # argparse: not one of the choices
        _settings("--replicas", "2", "--router", "round-robin")
    with pytest.raises(ValueError, match="router"):  # the environment or a config file
        Settings(replicas=2, router="round-robin")


def test_kuberay_manifest_builds_the_application() -> None:
    """deploy/rayservice.yaml's Serve config: its import path and args build the app."""
    import importlib
    from pathlib import Path

    import yaml
    from ray.serve import Application

    manifest = yaml.safe_load((Path(__file__).parents[2] / "deploy/rayservice.yaml").read_text())
    (app,) = yaml.safe_load(manifest["spec"]["serveConfigV2"])["applications"]
    module, _, name = app["import_path"].partition(":")
    built = getattr(importlib.import_module(module), name)(app["args"])
    assert isinstance(built, Application)
