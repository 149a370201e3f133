"""`fewshot classify` and `fewshot eval` from the command line (no language model needed)."""

from __future__ import annotations

import json
from pathlib import Path

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
    code = main(
        [
            "eval",
            "--tasks",
            "reviews",
            "--methods",
            "classifier",
            "--k",
            "1,2,4",
            "--seeds",
            "2",
            "--limit",
            "6",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    doc = json.loads((out / "results.json").read_text())
    assert {r["k"] for r in doc["summary"]} == {1, 2, 4}
    assert all(r["method"] == "classifier" and r["n"] == 6 for r in doc["summary"])
    assert "| reviews | classifier |" in (out / "results.md").read_text()
    assert (out / "accuracy_vs_k.png").read_bytes()[:4] == b"\x89PNG"


def test_eval_rejects_unknown_tasks(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "--tasks", "nope", "--out", "/nonexistent"]) == 2
    assert "unknown task" in capsys.readouterr().err
