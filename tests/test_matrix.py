"""The protocol matrix: every official client SDK against every upstream protocol, through one server.

Each cell is a tool-call round trip driven by a real SDK: the client offers get_weather,
the fake upstream model asks for it, the client runs it and sends the result back, and
the upstream must see that result paired with its own call (same id where its protocol
has ids, same function name where it names results) before it answers in text. Every
cell runs plain and streamed.
"""

import json

import anthropic
import openai
import pytest
from google import genai
from google.genai import types

from conftest import ServerProcess
from fakes import (Fleet, Reply, anthropic_frames, anthropic_message, chat_completion, gemini_frames,
                   gemini_response, responses_body, responses_frames)

INBOUND = ("chat", "responses", "anthropic", "google")
UPSTREAM = ("chat", "responses", "anthropic", "google")
QUESTION = "What is the weather in Paris?"
RESULT = "18C and sunny"
ANSWER = "It is 18C and sunny in Paris."
ARGS = {"city": "Paris"}
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
# The id each upstream protocol gives its call (Gemini's API gives none).
CALL_IDS = {"chat": "call_W1", "responses": "call_W1", "anthropic": "toolu_W1", "google": None}


# ---------------------------------------------------------------- the server and the fake models


@pytest.fixture(scope="module")
def upstreams():
    """One scripted fake model per upstream protocol."""
    with Fleet({name: lambda req, name=name: MODELS[name](req.body or {}, _streamed(name, req))
                for name in UPSTREAM}) as fleet:
        yield fleet


@pytest.fixture(scope="module")
def server(tmp_path_factory, upstreams):
    home = tmp_path_factory.mktemp("matrix-home")
    bases = {"chat": ("openai", "/v1"), "responses": ("openai", "/v1"), "anthropic": ("anthropic", ""),
             "google": ("google", "")}
    providers = {f"up-{name}": {"derives": bases[name][0], "api_base": upstreams[name].url + bases[name][1],
                                "api_key": f"key-{name}"} for name in UPSTREAM}
    providers["up-responses"]["api_protocol"] = "responses"
    models = {f"via-{name}": {"endpoints": [{"provider": f"up-{name}", "model_id": f"model-{name}"}]}
              for name in UPSTREAM}
    srv = ServerProcess(home, {"providers": providers, "models": models})
    yield srv
    srv.stop()


def _streamed(protocol: str, req) -> bool:
    if protocol == "google":
        return ":streamGenerateContent" in req.path
    return bool((req.body or {}).get("stream"))


# ---------------------------------------------------------------- the matrix


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("upstream", UPSTREAM)
@pytest.mark.parametrize("inbound", INBOUND)
def test_tool_round_trip(server, upstreams, inbound, upstream, stream):
    fake = upstreams[upstream]
    client = CLIENTS[inbound](server, f"via-{upstream}", stream)
    call_id, name, args = client.ask()
    assert (name, args) == ("get_weather", ARGS)
    if CALL_IDS[upstream] and inbound != "google":  # the client saw the upstream's own id
        assert call_id == CALL_IDS[upstream]
    answer = client.answer(RESULT)
    assert answer == ANSWER

    seen = PAIRINGS[upstream](fake.received[-1].body)
    assert seen["call"] == ("get_weather", ARGS)
    assert RESULT in seen["result"]
    if seen["call_id"] is not None or seen["result_id"] is not None:
        assert seen["call_id"] == seen["result_id"], "the result must answer the call it belongs to"
    if CALL_IDS[upstream] and call_id:  # ids survive the trip through the client's protocol
        assert seen["call_id"] == CALL_IDS[upstream]
    if "result_name" in seen:
        assert seen["result_name"] == "get_weather"
    assert _streamed(upstream, fake.received[-1]) == stream


# ---------------------------------------------------------------- clients, one per inbound protocol


class ChatClient:
    """The openai SDK's Chat Completions client, keeping the conversation as a list of messages."""

    def __init__(self, server, model, stream):
        self.sdk = openai.OpenAI(base_url=server.url + "/v1", api_key="client-key", max_retries=0)
        self.model, self.stream = model, stream
        self.messages = [{"role": "user", "content": QUESTION}]

    def ask(self):
        msg, finish = self._turn()
        assert finish == "tool_calls"
        calls = msg["tool_calls"]
        self.messages.append({"role": "assistant", "content": msg.get("content"), "tool_calls": calls})
        self.call_id = calls[0]["id"]
        return calls[0]["id"], calls[0]["function"]["name"], json.loads(calls[0]["function"]["arguments"])

    def answer(self, result):
        self.messages.append({"role": "tool", "tool_call_id": self.call_id, "content": result})
        msg, finish = self._turn()
        assert finish == "stop"
        return msg.get("content")

    def _turn(self):
        tools = [{"type": "function", "function": {"name": "get_weather", "description": "Current weather",
                                                   "parameters": WEATHER}}]
        if not self.stream:
            choice = self.sdk.chat.completions.create(model=self.model, messages=self.messages, tools=tools
                                                      ).choices[0]
            return choice.message.model_dump(exclude_none=True), choice.finish_reason
        text, calls, finish = "", {}, None
        for chunk in self.sdk.chat.completions.create(model=self.model, messages=self.messages, tools=tools,
                                                      stream=True):
            for choice in chunk.choices:
                text += choice.delta.content or ""
                for call in choice.delta.tool_calls or []:
                    slot = calls.setdefault(call.index, {"id": "", "type": "function",
                                                         "function": {"name": "", "arguments": ""}})
                    slot["id"] = call.id or slot["id"]
                    slot["function"]["name"] += (call.function and call.function.name) or ""
                    slot["function"]["arguments"] += (call.function and call.function.arguments) or ""
                finish = choice.finish_reason or finish
        msg = {"role": "assistant", "content": text or None}
        if calls:
            msg["tool_calls"] = [calls[i] for i in sorted(calls)]
        return msg, finish


class ResponsesClient:
    """The openai SDK's Responses client, replaying output items as Codex does (stateless)."""

    def __init__(self, server, model, stream):
        self.sdk = openai.OpenAI(base_url=server.url + "/v1", api_key="client-key", max_retries=0)
        self.model, self.stream = model, stream
        self.input = [{"role": "user", "content": QUESTION}]

    def ask(self):
        final = self._turn()
        call = next(item for item in final.output if item.type == "function_call")
        self.input += [item.model_dump(exclude_none=True) for item in final.output]
        self.call_id = call.call_id
        return call.call_id, call.name, json.loads(call.arguments)

    def answer(self, result):
        self.input.append({"type": "function_call_output", "call_id": self.call_id, "output": result})
        final = self._turn()
        assert final.status == "completed"
        return final.output_text

    def _turn(self):
        kwargs = {"model": self.model, "input": self.input, "store": False,
                  "tools": [{"type": "function", "name": "get_weather", "description": "Current weather",
                             "parameters": WEATHER, "strict": False}]}
        if not self.stream:
            return self.sdk.responses.create(**kwargs)
        with self.sdk.responses.stream(**kwargs) as stream:
            return stream.get_final_response()


class AnthropicClient:
    """The anthropic SDK, sending the assistant's content blocks back as they came."""

    def __init__(self, server, model, stream):
        self.sdk = anthropic.Anthropic(base_url=server.url, api_key="client-key", max_retries=0)
        self.model, self.stream = model, stream
        self.messages = [{"role": "user", "content": QUESTION}]

    def ask(self):
        msg = self._turn()
        assert msg.stop_reason == "tool_use"
        use = next(block for block in msg.content if block.type == "tool_use")
        self.messages.append({"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in msg.content]})
        self.call_id = use.id
        return use.id, use.name, use.input

    def answer(self, result):
        self.messages.append({"role": "user", "content": [{"type": "tool_result", "tool_use_id": self.call_id,
                                                           "content": result}]})
        msg = self._turn()
        assert msg.stop_reason == "end_turn"
        return "".join(b.text for b in msg.content if b.type == "text")

    def _turn(self):
        kwargs = {"model": self.model, "max_tokens": 256, "messages": self.messages,
                  "tools": [{"name": "get_weather", "description": "Current weather", "input_schema": WEATHER}]}
        if not self.stream:
            return self.sdk.messages.create(**kwargs)
        with self.sdk.messages.stream(**kwargs) as stream:
            return stream.get_final_message()


class GoogleClient:
    """The google-genai SDK with automatic function calling off, so the test runs the tool."""

    def __init__(self, server, model, stream):
        self.sdk = genai.Client(api_key="client-key", http_options=types.HttpOptions(base_url=server.url))
        self.model, self.stream = model, stream
        self.contents = [types.Content(role="user", parts=[types.Part(text=QUESTION)])]
        self.config = types.GenerateContentConfig(
            tools=[types.Tool(function_declarations=[types.FunctionDeclaration(
                name="get_weather", description="Current weather", parameters_json_schema=WEATHER)])],
            automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True))

    def ask(self):
        parts = self._turn()
        self.contents.append(types.Content(role="model", parts=parts))
        self.call = next(p.function_call for p in parts if p.function_call)
        return self.call.id, self.call.name, dict(self.call.args)

    def answer(self, result):
        reply = types.FunctionResponse(id=self.call.id, name=self.call.name, response={"result": result})
        self.contents.append(types.Content(role="user", parts=[types.Part(function_response=reply)]))
        return "".join(p.text or "" for p in self._turn())

    def _turn(self):
        if not self.stream:
            return self.sdk.models.generate_content(model=self.model, contents=self.contents,
                                                    config=self.config).candidates[0].content.parts
        return [part for chunk in self.sdk.models.generate_content_stream(
            model=self.model, contents=self.contents, config=self.config)
            for part in (chunk.candidates[0].content.parts or [])]


CLIENTS = {"chat": ChatClient, "responses": ResponsesClient, "anthropic": AnthropicClient, "google": GoogleClient}


# ---------------------------------------------------------------- fake models, one per upstream protocol
# Each answers a request without a tool result with a get_weather call and a request with
# one with ANSWER, in its own protocol's wire format, plain or streamed.


def chat_model(body, stream):
    answered = any(m.get("role") == "tool" for m in body.get("messages", []))
    call = {"id": CALL_IDS["chat"], "type": "function",
            "function": {"name": "get_weather", "arguments": json.dumps(ARGS)}}
    if not stream:
        return Reply(body=chat_completion(ANSWER) if answered else chat_completion(None, tool_calls=[call]))

    def chunk(delta, finish=None):
        return b"data: " + json.dumps({"id": "chatcmpl-m", "object": "chat.completion.chunk", "created": 1,
                                       "model": "m", "choices": [{"index": 0, "delta": delta,
                                                                  "finish_reason": finish}]}).encode() + b"\n\n"
    frames = [chunk({"role": "assistant", "content": ""})]
    if answered:
        frames += [chunk({"content": w}) for w in _words(ANSWER)] + [chunk({}, "stop")]
    else:
        args = call["function"]["arguments"]
        frames += [chunk({"tool_calls": [{"index": 0, **call, "function": {"name": "get_weather", "arguments": ""}}]}),
                   chunk({"tool_calls": [{"index": 0, "function": {"arguments": args[:5]}}]}),
                   chunk({"tool_calls": [{"index": 0, "function": {"arguments": args[5:]}}]}),
                   chunk({}, "tool_calls")]
    return Reply(frames=frames + [b"data: [DONE]\n\n"])


def responses_model(body, stream):
    answered = any(item.get("type") == "function_call_output" for item in body.get("input", []))
    calls = [] if answered else [(CALL_IDS["responses"], "get_weather", json.dumps(ARGS))]
    if not stream:
        return Reply(body=responses_body(ANSWER if answered else "", calls=calls))
    return Reply(frames=responses_frames(_words(ANSWER) if answered else (), calls=calls))


def anthropic_model(body, stream):
    answered = any(block.get("type") == "tool_result" for m in body.get("messages", [])
                   if isinstance(m.get("content"), list) for block in m["content"])
    calls = [] if answered else [(CALL_IDS["anthropic"], "get_weather", ARGS)]
    if not stream:
        return Reply(body=anthropic_message(ANSWER if answered else "", calls=calls))
    return Reply(frames=anthropic_frames(_words(ANSWER) if answered else (), calls=calls))


def google_model(body, stream):
    answered = any("functionResponse" in part for content in body.get("contents", [])
                   for part in content.get("parts", []))
    calls = [] if answered else [("get_weather", ARGS)]
    if not stream:
        return Reply(body=gemini_response(ANSWER if answered else "", calls=calls))
    return Reply(frames=gemini_frames(_words(ANSWER) if answered else (), calls=calls))


MODELS = {"chat": chat_model, "responses": responses_model, "anthropic": anthropic_model, "google": google_model}


def _words(text: str) -> tuple:
    words = text.split(" ")
    return tuple(w if i == len(words) - 1 else w + " " for i, w in enumerate(words))


# ---------------------------------------------------------------- what each upstream saw on the second turn


def chat_pairing(body):
    assistant = next(m for m in body["messages"] if m.get("tool_calls"))
    call = assistant["tool_calls"][0]
    result = next(m for m in body["messages"] if m["role"] == "tool")
    return {"call": (call["function"]["name"], json.loads(call["function"]["arguments"])), "call_id": call["id"],
            "result_id": result["tool_call_id"], "result": _text(result["content"])}


def responses_pairing(body):
    call = next(i for i in body["input"] if i.get("type") == "function_call")
    result = next(i for i in body["input"] if i.get("type") == "function_call_output")
    return {"call": (call["name"], json.loads(call["arguments"])), "call_id": call["call_id"],
            "result_id": result["call_id"], "result": _text(result["output"])}


def anthropic_pairing(body):
    blocks = [(m["role"], b) for m in body["messages"] if isinstance(m["content"], list) for b in m["content"]]
    use = next(b for role, b in blocks if role == "assistant" and b["type"] == "tool_use")
    result = next(b for role, b in blocks if role == "user" and b["type"] == "tool_result")
    return {"call": (use["name"], use["input"]), "call_id": use["id"], "result_id": result["tool_use_id"],
            "result": _text(result["content"])}


def google_pairing(body):
    parts = [(c.get("role"), p) for c in body["contents"] for p in c["parts"]]
    call = next(p["functionCall"] for role, p in parts if role == "model" and "functionCall" in p)
    result = next(p["functionResponse"] for role, p in parts if "functionResponse" in p)
    return {"call": (call["name"], call.get("args")), "call_id": call.get("id"), "result_id": result.get("id"),
            "result_name": result["name"], "result": json.dumps(result["response"])}


PAIRINGS = {"chat": chat_pairing, "responses": responses_pairing, "anthropic": anthropic_pairing,
            "google": google_pairing}


def _text(content) -> str:
    """Tool-result content in any of its shapes (string, block list, part list) as text."""
    return content if isinstance(content, str) else json.dumps(content)
