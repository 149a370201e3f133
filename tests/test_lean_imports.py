"""The server process imports only what serving needs.

A fresh interpreter builds `fewshot serve`'s parser and app: no torch, transformers, classifier
stack or plotting yet. Then it serves a tiny model and lists /tasks: torch (and transformers'
config classes) arrive with the model, the classifier stack and matplotlib still do not.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

# what `fewshot serve` must not import before a model loads / while it only generates text
NOT_AT_STARTUP = (
    "torch",
    "transformers",
    "sklearn",
    "scipy",
    "matplotlib",
    "sentence_transformers",
)
NOT_WHILE_SERVING = ("sklearn", "scipy", "matplotlib", "sentence_transformers")

_SERVE = """
import json, sys
from fastapi.testclient import TestClient
from fewshot.api.app import create_app
from fewshot.cli import build_parser
from fewshot.cli.serve import settings_from_args

model, cache_dir = sys.argv[1], sys.argv[2]
args = build_parser().parse_args(
    ["serve", "--model", "tiny=" + model, "--threads", "1", "--cache-dir", cache_dir]
)
app = create_app(settings_from_args(args))
seen = {"startup": sorted(sys.modules)}
with TestClient(app) as client:
    body = {"inputs": "Hello", "parameters": {"max_new_tokens": 2},
            "options": {"wait_for_model": True}}
    generated = client.post("/models/tiny", json=body)
    tasks = client.get("/tasks")
    seen["status"] = [generated.status_code, tasks.status_code]
    seen["served"] = sorted(sys.modules)
print(json.dumps(seen))
"""


def test_serve_imports_only_what_serving_needs(tiny_gpt_neo_dir: Path, tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", _SERVE, str(tiny_gpt_neo_dir), str(tmp_path / "cache")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["status"] == [200, 200]
    startup, served = set(seen["startup"]), set(seen["served"])
    assert [m for m in NOT_AT_STARTUP if m in startup] == []
    assert "torch" in served  # the model did load in this process
    assert [m for m in NOT_WHILE_SERVING if m in served] == []
