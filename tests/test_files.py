"""Images and files (PDFs, plain text...) across protocols, over HTTP against fake upstreams.

Every protocol carries files in its own place (Chat `file`, Responses `input_file`,
Anthropic `document`, Gemini inlineData/fileData with a non-image type); a file the
provider's protocol cannot carry is a 400 in the client's protocol, before any upstream call.
"""

import base64

import pytest
import requests

from conftest import ServerProcess
from fakes import Fleet, anthropic_upstream, gemini_upstream, openai_chat, openai_responses

PDF = base64.b64encode(b"%PDF-1.4\n%fake\n").decode()
NOTES = base64.b64encode("plain notes, é".encode()).decode()
UPSTREAMS = {"openai": openai_chat, "responses": openai_responses, "anthropic": anthropic_upstream,
             "google": gemini_upstream}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """One server over one fake upstream per protocol: model `via-<protocol>` goes to each."""
    with Fleet(UPSTREAMS) as fleet:
        providers = {f"up-{name}": {"derives": "openai" if name == "responses" else name,
                                    "api_base": fleet[name].url + ("/v1" if name in ("openai", "responses") else ""),
                                    "api_key": f"key-{name}"} for name in UPSTREAMS}
        providers["up-responses"]["api_protocol"] = "responses"
        providers["up-text"] = {"derives": "openai", "api_base": fleet["openai"].url + "/v1", "api_key": "k",
                                "models": {"text-model": {"modalities": ["text"]}}}
        models = {f"via-{name}": {"endpoints": [{"provider": f"up-{name}", "model_id": "m"}]} for name in UPSTREAMS}
        models["text-only"] = {"endpoints": [{"provider": "up-text", "model_id": "text-model"}]}
        server = ServerProcess(tmp_path_factory.mktemp("home"), {"providers": providers, "models": models})
        yield server, fleet
        server.stop()


def chat(server, model: str, *content) -> requests.Response:
    return requests.post(server.url + "/v1/chat/completions", json={
        "model": model, "messages": [{"role": "user", "content": [{"type": "text", "text": "read this"}, *content]}]})


def responses(server, model: str, *content) -> requests.Response:
    text = {"type": "input_text", "text": "read this"}
    return requests.post(server.url + "/v1/responses", json={
        "model": model, "input": [{"role": "user", "content": [text, *content]}]})


def messages(server, model: str, *content) -> requests.Response:
    return requests.post(server.url + "/v1/messages", json={
        "model": model, "max_tokens": 100,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "read this"}, *content]}]})


def gemini(server, model: str, *parts) -> requests.Response:
    return requests.post(f"{server.url}/v1beta/models/{model}:generateContent",
                         json={"contents": [{"role": "user", "parts": [{"text": "read this"}, *parts]}]})


CHAT_PDF = {"type": "file", "file": {"filename": "a.pdf", "file_data": f"data:application/pdf;base64,{PDF}"}}


def sent_content(fleet, upstream: str) -> list:
    """The user content the upstream received, after the leading text."""
    body = fleet[upstream].received[-1].body
    if upstream == "openai":
        return body["messages"][-1]["content"][1:]
    if upstream == "responses":
        return body["input"][-1]["content"][1:]
    if upstream == "anthropic":
        return body["messages"][-1]["content"][1:]
    return body["contents"][-1]["parts"][1:]


@pytest.mark.parametrize("upstream, expected", [
    ("responses", [{"type": "input_file", "filename": "file.pdf", "file_data": f"data:application/pdf;base64,{PDF}"}]),
    ("anthropic", [{"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": PDF}}]),
    ("google", [{"inlineData": {"mimeType": "application/pdf", "data": PDF}}]),
])
def test_a_chat_clients_pdf_reaches_every_other_protocol_as_its_file(world, upstream, expected):
    server, fleet = world
    assert chat(server, f"via-{upstream}", CHAT_PDF).status_code == 200
    assert sent_content(fleet, upstream) == expected


@pytest.mark.parametrize("upstream, expected", [
    ("responses", [{"type": "input_file", "file_url": "https://x/report.pdf"}]),
    ("anthropic", [{"type": "document", "source": {"type": "url", "url": "https://x/report.pdf"}}]),
    ("google", [{"fileData": {"mimeType": "application/pdf", "fileUri": "https://x/report.pdf"}}]),
])
def test_an_anthropic_clients_pdf_by_url_reaches_the_protocols_that_take_urls(world, upstream, expected):
    server, fleet = world
    document = {"type": "document", "source": {"type": "url", "url": "https://x/report.pdf"}}
    assert messages(server, f"via-{upstream}", document).status_code == 200
    assert sent_content(fleet, upstream) == expected


def test_a_file_by_url_is_a_400_in_the_clients_protocol_for_a_chat_provider(world):
    server, fleet = world
    before = len(fleet["openai"].received)
    resp = responses(server, "via-openai", {"type": "input_file", "file_url": "https://x/report.pdf"})
    assert resp.status_code == 400
    assert resp.json()["error"]["type"] == "invalid_request_error"
    assert "file by URL" in resp.json()["error"]["message"]
    document = {"type": "document", "source": {"type": "url", "url": "https://x/report.pdf"}}
    resp = messages(server, "via-openai", document)
    assert resp.status_code == 400 and resp.json()["type"] == "error" and "file by URL" in resp.text
    assert len(fleet["openai"].received) == before  # refused before any upstream call


def test_a_responses_clients_pdf_reaches_a_chat_provider_as_a_file_part(world):
    server, fleet = world
    file = {"type": "input_file", "filename": "a.pdf", "file_data": f"data:application/pdf;base64,{PDF}"}
    assert responses(server, "via-openai", file).status_code == 200
    assert sent_content(fleet, "openai") == [
        {"type": "file", "file": {"filename": "document.pdf", "file_data": f"data:application/pdf;base64,{PDF}"}}]


def test_a_plain_text_file_reaches_anthropic_as_a_text_document(world):
    server, fleet = world
    assert gemini(server, "via-anthropic", {"inlineData": {"mimeType": "text/plain", "data": NOTES}}).status_code == 200
    assert sent_content(fleet, "anthropic") == [
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "plain notes, é"}}]


def test_a_file_anthropic_cannot_take_is_a_400_in_the_clients_protocol(world):
    server, fleet = world
    before = len(fleet["anthropic"].received)
    resp = gemini(server, "via-anthropic", {"inlineData": {"mimeType": "audio/wav", "data": "UklGRg=="}})
    assert resp.status_code == 400
    assert resp.json()["error"]["status"] == "INVALID_ARGUMENT" and "audio/wav" in resp.json()["error"]["message"]
    assert len(fleet["anthropic"].received) == before


def test_a_gemini_image_stays_an_image_and_a_gemini_pdf_becomes_a_file(world):
    server, fleet = world
    assert gemini(server, "via-openai", {"inlineData": {"mimeType": "image/png", "data": "iVBO"}},
                  {"inlineData": {"mimeType": "application/pdf", "data": PDF}}).status_code == 200
    assert sent_content(fleet, "openai") == [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}},
        {"type": "file", "file": {"filename": "document.pdf", "file_data": f"data:application/pdf;base64,{PDF}"}}]


def test_a_file_by_file_id_is_a_400_naming_what_to_send(world):
    server, _ = world
    resp = chat(server, "via-anthropic", {"type": "file", "file": {"file_id": "file-1"}})
    assert resp.status_code == 400 and "file_data" in resp.json()["error"]["message"]


def test_files_skip_text_only_models_with_a_clear_400(world):
    server, fleet = world
    before = len(fleet["openai"].received)
    resp = chat(server, "text-only", CHAT_PDF)
    assert resp.status_code == 400 and "does not accept images or files" in resp.json()["error"]["message"]
    assert len(fleet["openai"].received) == before
