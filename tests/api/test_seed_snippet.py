"""The seed blog's `query()` snippet, verbatim except for its URL (tabs normalised to spaces),
run against a real server."""

from __future__ import annotations

import requests

SNIPPET = """
import json
import requests

API_TOKEN = ""

def query(payload='',parameters=None,options={'use_cache': False}):
    API_URL = "{URL}"
    headers = {"Authorization": f"Bearer {API_TOKEN}"}
    body = {"inputs":payload,'parameters':parameters,'options':options}
    response = requests.request("POST", API_URL, headers=headers, data= json.dumps(body))
    try:
      response.raise_for_status()
    except requests.exceptions.HTTPError:
        return "Error:"+" ".join(response.json()['error'])
    else:
      return response.json()[0]['generated_text']

parameters = {
    'max_new_tokens':25,  # number of generated tokens
    'temperature': 0.5,   # controlling the randomness of generations
    'end_sequence': "###" # stopping sequence for generation
}

prompt="...."             # few-shot prompt

data = query(prompt,parameters,options)
"""


def run_snippet(url: str) -> dict:
    # the snippet uses `options` without defining it; the blog's reader supplies it
    namespace: dict = {"options": {"use_cache": False}}
    exec(SNIPPET.replace("{URL}", url), namespace)
    return namespace


def test_seed_query_snippet(api_server) -> None:
    ns = run_snippet(f"{api_server.url}/models/tiny")
    data = ns["data"]
    assert isinstance(data, str) and not data.startswith("Error:")
    assert data.startswith("....")  # return_full_text defaults to true
    assert "###" not in data[len("....") :]  # end_sequence stops and is trimmed

    # parameters=None (the snippet's default) is accepted
    assert not ns["query"]("Hello").startswith("Error:")

    # a validation error comes back as a list of messages that the snippet joins
    err = ns["query"]("Hello", {"top_k": 0, "max_new_tokens": 5})
    assert err.startswith("Error:") and "top_k" in err


def test_seed_snippet_unknown_model(api_server) -> None:
    url = f"{api_server.url}/models/EleutherAI/gpt-neo-2.7B"
    assert run_snippet(url)["data"].startswith("Error:")
    response = requests.post(url, json={"inputs": "Hello"})
    assert response.status_code == 404
    assert "does not exist" in response.json()["error"]
