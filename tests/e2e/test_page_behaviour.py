"""Playground behaviour in headless Chromium against a stand-in server (fake_server.py): streaming
and stats, mid-stream errors, the API-key flow, keyboard use, copy-as-code and the phone layout.
These need no model, so they are quick; test_playground.py runs the page against the real app."""

from __future__ import annotations

import ast

import pytest
from e2e_support import serve_in_thread
from fake_server import MODELS, create_fake_app

pytestmark = pytest.mark.browser

RECORD_GROWTH = """() => {
  window.__growth = [];
  const out = document.querySelector('#output');
  new MutationObserver((records) => {
    const gen = out.querySelector('.gen');
    window.__growth.push({t: performance.now(), n: records.length, len: gen ? gen.textContent.length : 0});
  }).observe(out, {childList: true, subtree: true, characterData: true});
}"""


@pytest.fixture(scope="module")
def fake():
    app = create_fake_app(delay=0.08)
    with serve_in_thread(app) as url:
        yield url, app


@pytest.fixture(scope="module")
def fake_with_key():
    app = create_fake_app(api_key="s3cret", delay=0.01)
    with serve_in_thread(app) as url:
        yield url, app


def open_page(page_factory, url, **kw):
    page = page_factory(**kw)
    page.goto(url + "/")
    page.wait_for_selector("body[data-ready=true]")
    return page


def page_errors(page):
    # GET /presets is allowed to 404 (the page then uses its built-in presets).
    return [e for e in page.console_errors if "404" not in e]


def test_streams_tokens_and_reports_stats(page_factory, fake):
    url, app = fake
    page = open_page(page_factory, url)
    assert page.locator("#model option").all_inner_texts() == MODELS
    page.select_option("#preset", label="Tweet sentiment")
    assert page.input_value("#input-label") == "Tweet"
    assert page.input_value("#max-new-tokens") == "3"
    page.fill("#max-new-tokens", "10")
    page.click("#more summary")
    page.fill("#top-k", "40")
    page.fill("#seed", "7")
    page.evaluate(RECORD_GROWTH)
    page.click("#generate")
    page.wait_for_selector("#run-state[data-state=done]")

    growth = page.evaluate("window.__growth")
    lengths = [g["len"] for g in growth]
    assert len({n for n in lengths if n}) >= 3, growth  # text grew in several steps
    assert growth[-1]["t"] - growth[0]["t"] > 150  # ... over time
    assert page.inner_text("#output .gen") == " fromage de chèvre frais\n###"
    assert page.inner_text("#output .stop-seq") == "###"
    assert page.inner_text("#stat-finish") == "end sequence"
    assert page.inner_text("#stat-cache") == "hit · 32 / 42 tokens"
    assert page.inner_text("#stat-tokens") == "6"
    assert page.inner_text("#stat-ttft").endswith("ms")
    assert float(page.inner_text("#stat-tps")) > 0

    body = app.state.requests[-1]
    assert body["model"] == MODELS[0]
    assert body["inputs"].startswith("Classify the sentiment")
    assert body["inputs"].endswith("Tweet: This new music video was incredible\nSentiment:")
    assert body["parameters"] == {
        "details": True,
        "max_new_tokens": 10,
        "do_sample": True,
        "temperature": 0.1,
        "stop": ["###"],
        "top_k": 40,
        "seed": 7,
    }
    assert not page_errors(page)


def test_validation_and_stream_errors_are_shown(page_factory, fake):
    url, _ = fake
    page = open_page(page_factory, url)
    page.click("#more summary")
    page.fill("#top-p", "5")
    page.click("#generate")
    alert = page.locator("[role=alert]")
    alert.wait_for(state="visible")
    assert "`top_p` must be > 0.0 and < 1.0" in alert.inner_text()
    assert "422" in alert.inner_text()
    assert page.inner_text("#run-state") == "Error"

    page.fill("#top-p", "")
    page.click("label[for=mode-raw]")
    page.fill("#raw-prompt", "please FAIL")
    page.click("#generate")
    page.wait_for_selector("#run-state[data-state=error]")
    assert "boom" in alert.inner_text()
    assert page.inner_text("#output .gen") == " fromage de"  # what streamed before the error stays


def test_keyboard_generate_and_stop(page_factory, fake):
    url, app = fake
    page = open_page(page_factory, url)
    page.fill("#max-new-tokens", "7")
    page.fill("#end-sequence", "")
    page.fill("#query", "SLOW")  # the stand-in then streams a token every 0.8 s
    page.keyboard.press("Control+Enter")
    page.wait_for_selector("#output .gen:not(:empty)")
    assert page.is_enabled("#stop")
    page.keyboard.press("Escape")
    page.wait_for_selector("#run-state[data-state=stopped]")
    assert page.is_enabled("#generate")
    assert "stop" not in app.state.requests[-1]["parameters"]

    # Temperature 0 is greedy decoding.
    page.fill("#temperature", "0")
    page.keyboard.press("Control+Enter")
    page.wait_for_selector("#run-state[data-state=done]")
    params = app.state.requests[-1]["parameters"]
    assert params["do_sample"] is False and "temperature" not in params


def test_tab_order_reaches_the_controls(page_factory, fake):
    url, _ = fake
    page = open_page(page_factory, url)
    seen = []
    for _ in range(60):
        page.keyboard.press("Tab")
        seen.append(page.evaluate("document.activeElement.id || document.activeElement.className"))
    for wanted in [
        "model",
        "preset",
        "task",
        "query",
        "end-sequence",
        "max-new-tokens",
        "temperature",
        "generate",
        "copy-code",
    ]:
        assert wanted in seen, (wanted, seen)


def test_examples_editor_and_raw_mode(page_factory, fake):
    url, _ = fake
    page = open_page(page_factory, url)
    page.select_option("#preset", label="Q&A")
    page.click("#add-example")
    assert page.evaluate("document.activeElement.id") == "ex-4-input"
    page.keyboard.type("Who painted the Mona Lisa?")
    page.fill("#ex-4-output", "Leonardo da Vinci")
    page.click("button[aria-label='Remove example 1']")
    page.click("label[for=mode-raw]")
    raw = page.input_value("#raw-prompt")
    assert "What is the capital of France?" not in raw
    assert "Question: Who painted the Mona Lisa?\nAnswer: Leonardo da Vinci\n###\n" in raw
    assert raw.endswith("\nAnswer:")

    # Raw edits in the same layout go back into the example rows.
    page.fill("#raw-prompt", raw.replace("Leonardo da Vinci", "Leonardo"))
    page.click("label[for=mode-examples]")
    assert page.input_value("#ex-3-output") == "Leonardo"

    # Free text that is not in that layout stays in raw mode, with a note.
    page.click("label[for=mode-raw]")
    page.fill("#raw-prompt", "Once upon a time")
    page.click("label[for=mode-examples]")
    assert page.is_checked("#mode-raw")
    assert "stays in raw mode" in page.inner_text("#prompt-note")


def test_copy_as_code(page_factory, fake):
    url, _ = fake
    page = open_page(page_factory, url)
    page.fill("#max-new-tokens", "12")
    page.click("#more summary")
    page.fill("#seed", "3")
    page.click("#copy-code")
    page.wait_for_selector("#code-dialog[open]")
    python = page.inner_text("#code-text")
    tree = ast.parse(python)
    assigned = {n.targets[0].id: n.value for n in tree.body if isinstance(n, ast.Assign)}
    prompt = ast.literal_eval(assigned["prompt"])
    assert prompt == page.evaluate("document.querySelector('#prompt-preview').textContent")
    assert ast.literal_eval(assigned["parameters"]) == {
        "max_new_tokens": 12,
        "temperature": 0.1,
        "end_sequence": "###",
        "seed": 3,
        "return_full_text": False,
    }
    assert f'API_URL = "{url}/models/{MODELS[0]}"' in python

    page.keyboard.press("ArrowRight")
    curl = page.inner_text("#code-text")
    assert curl.startswith(f"curl '{url}/models/{MODELS[0]}'")
    page.keyboard.press("Escape")
    assert page.evaluate("document.activeElement.id") == "copy-code"


def test_api_key_prompt(page_factory, fake_with_key):
    url, app = fake_with_key
    page = open_page(page_factory, url)
    assert page.is_visible("#api-key")  # /info says keys are on
    page.click("#generate")
    page.locator("[role=alert]").wait_for(state="visible")
    assert "401" in page.inner_text("[role=alert]")
    page.fill("#api-key", "s3cret")
    page.keyboard.press("Enter")
    assert page.evaluate("localStorage.getItem('fewshot.apiKey')") == "s3cret"
    assert page.is_hidden("[role=alert]")
    page.click("#generate")
    page.wait_for_selector("#run-state[data-state=done]")
    assert app.state.requests  # the request got through with the bearer token


def test_phone_layout(page_factory, fake, artifacts):
    url, _ = fake
    page = open_page(page_factory, url, width=360, height=740)
    page.click("#generate")
    page.wait_for_selector("#run-state[data-state=done]")
    assert page.evaluate("document.documentElement.scrollWidth") <= 360
    for sel in ["#model", "#preset", "#generate", "#stop", "#end-sequence", "#output"]:
        box = page.locator(sel).bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 360, sel
    page.screenshot(path=str(artifacts / "playground-phone-fake.png"), full_page=True)


def test_uses_the_server_presets(page_factory):
    toolkit = pytest.importorskip("fewshot.toolkit.presets")
    with serve_in_thread(create_fake_app(presets=toolkit.list_presets())) as url:
        page = open_page(page_factory, url)
        titles = page.locator("#preset option").all_inner_texts()
        assert titles == [p["title"] for p in toolkit.list_presets()] + ["Blank"]
        # The default preset is the blog's English -> French, rendered exactly as the toolkit does.
        assert (
            page.locator("#preset option:checked").inner_text() == "Translation: English to French"
        )
        preview = page.evaluate("document.querySelector('#prompt-preview').textContent")
        assert preview == toolkit.load_preset("translation_en_fr").render()
        assert page.input_value("#end-sequence") == "###"
        assert page.input_value("#temperature") == "0"
        page.select_option("#preset", label="Question answering")
        assert (page.input_value("#input-label"), page.input_value("#output-label")) == ("Q", "A")
        preview = page.evaluate("document.querySelector('#prompt-preview').textContent")
        assert preview == toolkit.load_preset("question_answering").render()
        assert not page_errors(page)


SSE_CASES = """async () => {
  const { createSSEParser } = await import('./static/sse.js');
  const text = 'data:{"a":1}\\r\\n\\r\\n: keep-alive\\n\\nevent: x\\ndata: {"b":2}\\n\\ndata:l1\\ndata:l2\\r\\rdata:{"c":3}';
  const results = [];
  for (const size of [1, 2, 3, 7, text.length]) {
    const got = [];
    const p = createSSEParser((d) => got.push(d));
    for (let i = 0; i < text.length; i += size) p.push(text.slice(i, i + size));
    p.end();
    results.push(got);
  }
  return results;
}"""

SNIPPET_OF = """async (prompt) => {
  const { pythonSnippet } = await import('./static/snippets.js');
  return pythonSnippet({ base: location.href, model: 'org/model', prompt, params: { stop: ['###'] }, auth: false });
}"""


def test_sse_parser_and_python_strings(page_factory, fake):
    url, _ = fake
    page = open_page(page_factory, url)
    for events in page.evaluate(SSE_CASES):  # the same events however the bytes are split
        assert events == ['{"a":1}', '{"b":2}', "l1\nl2", '{"c":3}']

    tricky = [
        "one line",
        'ends with a quote "\nx: "',
        'triple """ quotes\\ and \\n backslashes\n\ttab',
        "trailing space \nnext  \n",
        "control \x01 char\r\nCRLF\n",
        "unicode: é ✓ 😀\n###\n",
    ]
    for prompt in tricky:
        code = page.evaluate(SNIPPET_OF, prompt)
        tree = ast.parse(code)
        node = next(
            n for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "prompt"
        )
        assert ast.literal_eval(node.value) == prompt, code
        assert not any(line.endswith(" ") for line in code.splitlines())
