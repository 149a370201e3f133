"""Retake docs/playground.png: the playground in headless Chromium against the real app serving
the demo model (Gemma 3 270M), after an English -> French generation. Not a test; run it by hand:

    .venv/bin/python tests/e2e/screenshot_docs.py [--model gemma-3-270m] [--out docs/playground.png]

The timings in the picture are those of the machine it runs on.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from e2e_support import CHROMIUM, CHROMIUM_ARGS, serve_in_thread  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "playground.png")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    from playwright.sync_api import sync_playwright

    from fewshot.api.app import create_app
    from fewshot.settings import Settings

    app = create_app(Settings(models=[args.model], threads=args.threads))
    with serve_in_thread(app) as url, sync_playwright() as pw:
        while any(m.status == "loading" for m in app.state.fewshot.models):
            time.sleep(0.5)
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        page.goto(url + "/")
        page.wait_for_selector("body[data-ready=true]")
        page.fill("#temperature", "0")
        page.fill("#max-new-tokens", "12")
        for _ in range(2):  # the first run warms the engine up
            page.click("#generate")
            page.wait_for_selector("#run-state:not([data-state=running])", timeout=300_000)
        print(page.inner_text("#output"))
        page.screenshot(path=str(args.out), full_page=True)
        browser.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
