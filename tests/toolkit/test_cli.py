"""`fewshot classify` and `fewshot eval` from the command line (no language model needed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fewshot.cli import build_parser, main


def test_parsers_are_registered() -> None:
    args = build_parser().parse_args(["eval", "--k", "0,1,2", "--seeds", "2", "--limit", "5"])
    assert args.k == [0, 1, 2] and args.seeds == "2" and args.limit == 5
    args = build_parser().parse_args(["classify", "predict", "t", "a", "b"])
    assert args.action == "predict" and args.texts == ["a", "b"]


def test_classify_train_predict_list_delete(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "train.csv"
    data.write_text(
        "text,label\n"
        "I loved it,positive\nWonderful and fun,positive\nGreat service,positive\n"
        "I hated it,negative\nBoring and awful,negative\nTerrible service,negative\n"
    )
    base = ["classify", "--tasks-dir", str(tmp_path / "tasks")]
    assert main([*base, "train", "mini", "--data", str(data)]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["labels"] == ["negative", "positive"] and stats["n_examples"] == 6
    assert main([*base, "train", "mini", "--data", str(data)]) == 1  # exists, no --overwrite
    capsys.readouterr()
    assert main([*base, "predict", "mini", "Lovely, great fun", "Awful and boring"]) == 0
    preds = json.loads(capsys.readouterr().out)
    assert [p["label"] for p in preds] == ["positive", "negative"]
    assert main([*base, "list"]) == 0
    assert [t["name"] for t in json.loads(capsys.readouterr().out)] == ["mini"]
    assert main([*base, "delete", "mini"]) == 0
    assert main([*base, "delete", "mini"]) == 1


def test_eval_classifier_only_writes_json_markdown_png(tmp_path: Path) -> None:
    out = tmp_path / "eval"
    argv = ["eval", "--tasks", "reviews", "--methods", "classifier", "--k", "1,2,4"]
    argv += ["--seeds", "2", "--limit", "6", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    rows = json.loads((out / "results.json").read_text())["results"]
    assert {r["k"] for r in rows} == {1, 2, 4}
    assert all(r["method"] == "classifier" and r["n"] == 12 for r in rows)
    assert all(r["ci_low"] <= r["accuracy"] <= r["ci_high"] for r in rows)
    assert "| reviews | classifier | random |" in (out / "results.md").read_text()
    assert (out / "accuracy_vs_k.png").read_bytes()[:4] == b"\x89PNG"


def test_eval_on_a_csv_through_the_server(
    tmp_path: Path, real_server: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    url, settings = real_server
    data = tmp_path / "mine.csv"
    rows = [("good food, kind staff", "yes"), ("cold and late", "no"), ("lovely", "yes")]
    rows += [("rude waiter", "no"), ("great view", "yes"), ("dirty plates", "no")]
    data.write_text("review,ok\n" + "".join(f'"{t}",{lab}\n' for t, lab in rows))
    out = tmp_path / "eval"
    argv = ["eval", "--url", url, "--token", settings.api_keys[0], "--model", "tiny"]
    argv += ["--data", str(data), "--text-field", "review", "--label-field", "ok"]
    argv += [
        "--task-description",
        "Did they like it?",
        "--format",
        "Review: {input}\\nOK: {output}",
    ]
    argv += ["--k", "0,2", "--seeds", "1", "--select", "random,similar", "--calibrate"]
    argv += ["--methods", "generate,rank", "--out", str(out), "--no-progress"]
    assert main(argv) == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())["results"]
    assert set(results[0]) == {
        "model",
        "task",
        "method",
        "k",
        "select",
        "calibrated",
        "n",
        "accuracy",
        "ci_low",
        "ci_high",
        "ms_per_query",
    }
    got = {(r["method"], r["k"], r["select"], r["calibrated"]): r["n"] for r in results}
    assert got[("rank", 2, "similar", True)] == 6 and got[("generate", 0, "random", False)] == 6
    assert {r["model"] for r in results} == {"tiny"} and {r["task"] for r in results} == {"mine"}
    run = json.loads((out / "run.json").read_text())
    assert run["meta"]["notes"] == []  # rank went through the server, not skipped
    prompts_ok = {p["input"] for p in run["predictions"]} == {t for t, _ in rows}
    assert prompts_ok and all(
        p["prediction"] in ("yes", "no") for p in run["predictions"] if p["method"] == "rank"
    )


def test_eval_rejects_unknown_tasks(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "--tasks", "nope", "--out", "/nonexistent"]) == 2
    assert "unknown task" in capsys.readouterr().err
