"""End to end: the playground page in headless Chromium against the real app (create_app)
serving the session's tiny random GPT-Neo (`tiny_gpt_neo_dir`, tests/conftest.py) on
127.0.0.1 through uvicorn.

Loads the page, picks a preset, generates with the output streaming in, checks the streamed
text against the server's own non-streamed answer, stops a long generation, shows the server's
422 message for top_p = 5, runs the "copy as code" Python and curl snippets against the server,
and goes through the API-key flow. Screenshots go to tests/e2e/artifacts/ (docs/playground.png
comes from screenshot_docs.py, with the demo model).
"""

from __future__ import annotations

import ast
import contextlib
import json
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from e2e_support import serve_in_thread

pytestmark = pytest.mark.browser

pytest.importorskip("fewshot.api.app", reason="the API app is not there yet")

MODEL = "tiny-gpt-neo"
KEY = "e2e-secret-key"

COUNT_CHUNKS = """() => {
  window.__chunks = [];
  const out = document.querySelector('#output');
  new MutationObserver((records) => {
    const gen = out.querySelector('.gen');
    const added = records.filter((r) => r.type === 'childList' && r.target === gen).length;
    window.__chunks.push({t: performance.now(), added, len: gen ? gen.textContent.length : 0});
  }).observe(out, {childList: true, subtree: true, characterData: true});
}"""


ESCAPE_ON_FIRST_TOKEN = """() => {
  const gen = () => document.querySelector('#output .gen');
  const obs = new MutationObserver(() => {
    if (gen() && gen().textContent) {
      obs.disconnect();
      document.activeElement.dispatchEvent(new KeyboardEvent('keydown', {key: 'Escape', bubbles: true}));
    }
  });
  obs.observe(document.querySelector('#output'), {childList: true, subtree: true});
}"""


@contextlib.contextmanager
def real_server(model_dir: Path, cache_dir: Path, **fields):
    """create_app(settings) under uvicorn on 127.0.0.1, serving the tiny model as MODEL;
    yields once the model is loaded."""
    from fewshot.api.app import create_app
    from fewshot.settings import Settings

    settings = Settings(
        models=[f"{MODEL}={model_dir}"],
        threads=1,
        kv_cache_mb=16,
        max_batch_size=8,
        cache_dir=cache_dir,
        **fields,
    )
    with serve_in_thread(create_app(settings)) as url:
        deadline = time.monotonic() + 120
        while True:
            with urllib.request.urlopen(url + "/info", timeout=30) as r:
                models = json.loads(r.read()).get("models") or []
            if all(m.get("status", "ready") != "loading" for m in models):
                break
            assert time.monotonic() < deadline, "the model did not load"
            time.sleep(0.05)
        assert not [m for m in models if m.get("error")], models
        yield url


@pytest.fixture(scope="module")
def server(tiny_gpt_neo_dir, tmp_path_factory):
    with real_server(tiny_gpt_neo_dir, tmp_path_factory.mktemp("e2e-cache")) as url:
        yield url


@pytest.fixture(scope="module")
def keyed_server(tiny_gpt_neo_dir, tmp_path_factory):
    with real_server(tiny_gpt_neo_dir, tmp_path_factory.mktemp("e2e-cache"), api_keys=[KEY]) as url:
        yield url


def post_json(url, body):
    headers = {"Content-Type": "application/json"}
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def open_page(page_factory, url, **kw):
    page = page_factory(**kw)
    page.goto(url + "/")
    page.wait_for_selector("body[data-ready=true]")
    return page


def choose_preset(page, word):
    labels = page.locator("#preset option").all_inner_texts()
    label = next(x for x in labels if word.lower() in x.lower())
    page.select_option("#preset", label=label)
    return label


def snippet(page, tab):
    page.click("#copy-code")
    page.wait_for_selector("#code-dialog[open]")
    page.click(f"#tab-{tab}")
    text = page.inner_text("#code-text")
    page.keyboard.press("Escape")
    return text


def test_playground_end_to_end(page_factory, server, artifacts):
    page = open_page(page_factory, server)
    assert MODEL in page.locator("#model option").all_inner_texts()
    assert page.input_value("#model") == MODEL
    with urllib.request.urlopen(server + "/presets", timeout=30) as r:
        served = [p["title"] for p in json.loads(r.read())["presets"]]
    assert page.locator("#preset option").all_inner_texts()[: len(served)] == served

    choose_preset(page, "sentiment")
    page.fill("#max-new-tokens", "96")
    page.fill("#temperature", "0")  # greedy: comparable with the non-streamed answer
    page.fill("#end-sequence", "")  # a random model may never say ###: let all 96 tokens come
    page.evaluate(COUNT_CHUNKS)
    page.click("#generate")
    page.wait_for_selector("#run-state[data-state=done]", timeout=120_000)

    chunks = page.evaluate("window.__chunks")
    assert sum(c["added"] for c in chunks) >= 3, chunks  # the text arrived token by token
    lengths = [c["len"] for c in chunks if c["added"]]
    # ... and grew in several steps (a fast server may deliver many tokens per network read)
    assert lengths == sorted(lengths) and len(set(lengths)) >= 2, chunks
    streamed = page.inner_text("#output .gen")
    assert streamed
    assert page.inner_text("#stat-tokens") == "96"
    assert page.inner_text("#stat-finish") == "token length"
    assert page.inner_text("#stat-ttft").endswith(("ms", " s"))
    assert float(page.inner_text("#stat-tps")) > 0
    assert page.inner_text("#stat-cache") != "–"
    assert page.is_hidden("[role=alert]")

    prompt = page.evaluate("document.querySelector('#prompt-preview').textContent")
    assert "sentiment" in prompt.lower() and prompt.endswith(":")
    status, body = post_json(
        server + "/generate",
        {
            "inputs": prompt,
            "model": MODEL,
            "parameters": {"max_new_tokens": 96, "do_sample": False},
        },
    )
    assert status == 200, body
    assert streamed == body["generated_text"]

    page.screenshot(path=str(artifacts / "playground.png"), full_page=True)

    # "Copy as code": the seed-style Python snippet and the curl command both work as copied.
    python = snippet(page, "python")
    assert (
        ast.literal_eval(
            next(
                n.value
                for n in ast.parse(python).body
                if isinstance(n, ast.Assign) and n.targets[0].id == "prompt"
            )
        )
        == prompt
    )
    run = subprocess.run(
        [sys.executable, "-c", python], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() and not run.stdout.startswith("Error"), run.stdout
    if shutil.which("curl"):
        curl = snippet(page, "curl")
        run = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        assert isinstance(json.loads(run.stdout)[0]["generated_text"], str), run.stdout

    # A bad setting: the server's 422 message is shown in the page.
    page.click("#more summary")
    page.fill("#top-p", "5")
    page.fill("#temperature", "0.7")
    page.click("#generate")
    alert = page.locator("[role=alert]")
    alert.wait_for(state="visible")
    status, err = post_json(
        server + "/generate_stream", {"inputs": prompt, "parameters": {"top_p": 5}}
    )
    assert status == 422 and err["error_type"] == "validation"
    assert err["error"] in alert.inner_text()
    assert "422" in alert.inner_text()
    assert page.inner_text("#run-state") == "Error"
    page.screenshot(path=str(artifacts / "playground-error.png"))

    # Stop a long generation from the keyboard: Escape as soon as the first token shows.
    page.fill("#top-p", "")
    page.fill("#max-new-tokens", "100")
    page.evaluate(ESCAPE_ON_FIRST_TOKEN)
    page.focus("#query")
    page.keyboard.press("Control+Enter")
    page.wait_for_selector("#run-state[data-state=stopped]", timeout=60_000)
    assert page.is_hidden("[role=alert]")
    assert page.inner_text("#output .gen")
    assert 0 < int(page.inner_text("#stat-tokens")) < 100

    assert not [e for e in page.console_errors if "404" not in e and "422" not in e]


def test_playground_on_a_phone(page_factory, server, artifacts):
    page = open_page(page_factory, server, width=360, height=760, is_mobile=True, has_touch=True)
    choose_preset(page, "french")
    page.click("#generate")
    page.wait_for_selector("#run-state[data-state=done]", timeout=120_000)
    assert page.inner_text("#output .gen")
    assert page.evaluate("document.documentElement.scrollWidth") <= 360
    page.screenshot(path=str(artifacts / "playground-phone.png"), full_page=True)


def test_playground_asks_for_the_api_key(page_factory, keyed_server):
    page = open_page(page_factory, keyed_server)
    page.click("#generate")
    alert = page.locator("[role=alert]")
    alert.wait_for(state="visible")
    assert "401" in alert.inner_text()
    assert page.is_visible("#api-key")
    assert page.evaluate("document.activeElement.id") == "api-key"

    page.keyboard.type(KEY)
    page.keyboard.press("Enter")
    assert page.evaluate("localStorage.getItem('fewshot.apiKey')") == KEY
    page.wait_for_function(
        f"[...document.querySelectorAll('#model option')].some(o => o.value === '{MODEL}')"
    )
    page.click("#generate")
    page.wait_for_selector("#run-state[data-state=done]", timeout=120_000)
    assert page.is_hidden("[role=alert]")
    assert "Bearer $API_TOKEN" in snippet(page, "curl")
    # /presets needs the key too: with it, the server's presets replace the built-in ones.
    assert "Translation: English to French" in page.locator("#preset option").all_inner_texts()

    # The key survives a reload (localStorage) and is sent again.
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    page.click("#generate")
    page.wait_for_selector("#run-state[data-state=done]", timeout=120_000)
