"""The README's first ten minutes, run as written: the quick-start request against `bitrouter serve`."""

import json
import re
import shlex
from pathlib import Path

import requests

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_the_quick_start_curl_works_as_written(start_server):
    server = start_server({})  # `make run`: no configuration, no key
    block = re.search(r"```sh\n(curl http://127\.0\.0\.1:8787/v1/chat/completions.*?)```", README, re.S).group(1)
    words = shlex.split(block.replace("\\\n", " "))
    url = words[1].replace("http://127.0.0.1:8787", server.url)
    body = json.loads(words[words.index("-d") + 1])
    reply = requests.post(url, data=json.dumps(body), headers={"Content-Type": "application/json"}, timeout=10)
    assert reply.status_code == 200
    shown = re.search(r'"message": (\{.*?\})', README).group(1)
    assert reply.json()["choices"][0]["message"] == json.loads(shown)


def test_the_quick_start_says_how_to_get_the_command():
    quick = README.split("## Quick start", 1)[1].split("## A minimal configuration", 1)[0]
    assert ". .venv/bin/activate" in quick and "pipx install ." in quick and ".venv/bin/bitrouter" in quick
    assert (Path(__file__).resolve().parent.parent / "Makefile").read_text().count("$(BIN)/bitrouter serve") == 1
