"""Prompt rendering: layout, the whitespace rule at the answer boundary, separators, files, presets."""

from __future__ import annotations

import json

import pytest

from fewshot.toolkit.presets import get_preset, list_presets, load_preset, preset_names
from fewshot.toolkit.prompts import Example, FewShotPrompt, PromptError, load_prompt

FMT = "English: {input}\nFrench: {output}"


def _prompt(**kw: object) -> FewShotPrompt:
    base = dict(
        description="Translate English to French.",
        examples=[("sea otter", "loutre de mer"), {"input": "cheese", "output": "fromage"}],
        format=FMT,
    )
    base.update(kw)
    return FewShotPrompt(**base)  # type: ignore[arg-type]


def test_render_layout_matches_the_seed() -> None:
    text = _prompt().render("peppermint")
    assert text == (
        "Translate English to French.\n###\n"
        "English: sea otter\nFrench: loutre de mer\n###\n"
        "English: cheese\nFrench: fromage\n###\n"
        "English: peppermint\nFrench:"
    )


def test_query_never_ends_with_whitespace_and_the_space_moves_to_the_answer() -> None:
    p = _prompt()
    assert not p.render("  cheese \n").endswith((" ", "\t"))
    assert p.render("  cheese \n").endswith("English: cheese\nFrench:")
    assert p.answer_prefix == " "
    assert p.continuation(" fromage ") == " fromage"
    # The rendered example equals query + continuation: what rank classification scores.
    assert p.render_example(Example("cheese", "fromage")) == p.render_query(
        "cheese"
    ) + p.continuation("fromage")


def test_format_with_newline_before_answer_keeps_the_newline() -> None:
    p = _prompt(format="Q: {input}\nA:\n{output}")
    assert p.render("x").endswith("Q: x\nA:\n")
    assert p.answer_prefix == ""
    assert p.render_example(Example("x", " y ")) == "Q: x\nA:\ny"


def test_example_whitespace_is_normalised_in_demos() -> None:
    p = _prompt(examples=[(" sea otter ", "  loutre de mer \n")])
    assert "English: sea otter\nFrench: loutre de mer\n###" in p.render("a")


def test_custom_separator_and_stop() -> None:
    p = _prompt(separator="<END>")
    text = p.render("cat")
    assert text.count("\n<END>\n") == 3
    assert p.stop == ["<END>"]


def test_no_description_no_query() -> None:
    p = _prompt(description="", examples=[("a", "b")])
    assert p.render() == "English: a\nFrench: b"
    assert p.with_examples([]).render("c") == "English: c\nFrench:"


def test_parse_answer_cuts_at_separator_and_strips() -> None:
    p = _prompt()
    assert p.parse_answer(" fromage\n###\nEnglish: milk") == "fromage"
    assert p.parse_answer(" fromage\nEnglish: milk") == "fromage"
    assert p.parse_answer(" two\nlines###", first_line=False) == "two\nlines"
    assert p.parse_answer("   \n") == ""


@pytest.mark.parametrize(
    "fmt",
    ["{input} {output} after", "no placeholders", "{output} only", "{input} {output} {output}"],
)
def test_bad_formats_are_rejected(fmt: str) -> None:
    with pytest.raises(PromptError):
        _prompt(format=fmt)


def test_bad_definitions_are_rejected() -> None:
    with pytest.raises(PromptError):
        FewShotPrompt.from_dict({"format": FMT, "oops": 1})
    with pytest.raises(PromptError):
        FewShotPrompt.from_dict({"format": FMT, "examples": [{"input": "x"}]})
    with pytest.raises(PromptError):
        _prompt(separator="  ")


def test_braces_in_user_text_are_literal() -> None:
    p = _prompt(examples=[("{output}", "{input}")])
    assert "English: {output}\nFrench: {input}" in p.render("{x}")


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_file_round_trip(tmp_path, suffix: str) -> None:
    p = _prompt(query="milk", name="en_fr", parameters={"max_new_tokens": 5, "temperature": 0.0})
    path = p.save(tmp_path / f"prompt{suffix}")
    q = load_prompt(path)
    assert q == p
    assert q.render() == p.render()
    if suffix == ".json":
        assert json.loads(path.read_text())["examples"][0] == {
            "input": "sea otter",
            "output": "loutre de mer",
        }


def test_unicode_and_multiline_survive_yaml(tmp_path) -> None:
    p = _prompt(examples=[("peppermint", "menthe poivrée"), ("a: b", "c # d")], separator="---")
    assert load_prompt(p.save(tmp_path / "p.yml")) == p


def test_presets_are_valid_and_json_able() -> None:
    presets = list_presets()
    names = {p["name"] for p in presets}
    assert {"translation_en_fr", "sentiment", "tweet_generation", "question_answering"} <= names
    assert names == set(preset_names())
    json.dumps(presets)  # JSON-able
    for data in presets:
        prompt = load_preset(data["name"])
        assert prompt.examples and prompt.query
        assert not prompt.render().endswith(" ")
        assert data["title"]
    get_preset("sentiment")["examples"].clear()  # a copy: the cache is untouched
    assert load_preset("sentiment").examples
    with pytest.raises(PromptError):
        get_preset("nope")
