"""The app around the routes: the playground page and its assets, the toolkit's /tasks router."""

from __future__ import annotations

import requests

from fewshot.api.app import STATIC_DIR


def test_playground_served(api_server) -> None:
    page = requests.get(api_server.url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.text == (STATIC_DIR / "index.html").read_text()
    asset = next(p for p in STATIC_DIR.iterdir() if p.suffix == ".js")
    r = requests.get(f"{api_server.url}/static/{asset.name}")
    assert r.status_code == 200 and r.content == asset.read_bytes()
    assert requests.get(api_server.url + "/static/nope.js").status_code == 404


def test_tasks_router_included(api_server) -> None:
    r = requests.get(api_server.url + "/tasks")
    assert r.status_code == 200, r.text
