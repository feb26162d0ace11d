"""A scripted coding model behind all four provider protocols, for the agent matrix.

One CodingModel answers Chat Completions, Responses, Anthropic Messages and Gemini on one
loopback port (a FakeUpstream), the way a coding model behaves: it finds the client's own
shell tool among the tools offered, calls it with arguments shaped to that tool's JSON
schema, and answers in text once the results are back. The task prompt picks the script:

  [[single]]      one call, then the answer
  [[sequential]]  one call, then a second one, then the answer
  [[parallel]]    two calls in one turn, then the answer

Each call runs `echo agent-N > proof-N.txt && cat proof-N.txt`, so a test can check that
the command really ran (the file exists) and that its output came back (the final answer
quotes `agent-N` from the tool results).

With reasoning on, the model thinks before every turn and enforces what the real APIs
enforce about that thinking:
  anthropic  a signed thinking block must lead the assistant turn that holds its tool_use;
  responses  the reasoning item (its encrypted_content) must come before its function_call;
  google     the first functionCall part of a step carries its thoughtSignature;
  openai     (DeepSeek/Kimi style) reasoning_content comes back on the tool-call turn.
Each rejects, with a 400 in its own shape, a proof it did not issue. `returned` counts the
proofs that came back intact, so a test can tell a kept proof from one silently dropped.
"""

import base64
import hashlib
import hmac
import json
import re
import secrets
import threading

from fakes import FakeUpstream, Reply

SHELL_TOOLS = ("Bash", "exec_command", "run_shell_command", "shell_command", "shell")
SCRIPTS = {"single": 1, "sequential": 2, "parallel": 2}
GEMINI_SKIP = "skip_thought_signature_validator"  # Google's documented placeholder for foreign calls
# Schema keywords Gemini's function declarations refuse (seen in its 400s).
GEMINI_REFUSED = ("$schema", "additionalProperties", "propertyNames", "exclusiveMinimum", "exclusiveMaximum",
                  "const", "$ref", "$defs")


class Refused(Exception):
    """A request the real provider would refuse with this 400 message."""


class CodingModel:
    """The fake provider: a FakeUpstream whose behaviour is this model, steered by the test."""

    def __init__(self, reasoning: bool = False):
        self.reasoning = reasoning
        self.secret = secrets.token_bytes(16)
        self.issued = {}  # proof -> what it must come back with (call ids, text)
        self.returned = 0  # proofs that came back intact
        self.refusals = []  # 400 messages sent
        self.lock = threading.Lock()
        self.upstream = FakeUpstream(self.answer)

    def __enter__(self):
        self.upstream.__enter__()
        return self

    def __exit__(self, *exc):
        self.upstream.__exit__(*exc)

    @property
    def url(self) -> str:
        return self.upstream.url

    @property
    def received(self) -> list:
        return self.upstream.received

    def answer(self, req) -> Reply:
        """Dispatch on the request path to the protocol's dialect of the script."""
        path, body = req.path.split("?")[0], req.body or {}
        dialect = next(d for suffix, d in DIALECTS.items() if path.endswith(suffix) or suffix in path)
        try:
            if path.endswith(("count_tokens", ":countTokens", "input_tokens")):
                return Reply(body=dialect.counted(len(json.dumps(body)) // 4))
            with self.lock:
                dialect.check(self, body, req.headers)
                turn = self.turn(dialect, body)
            stream = dialect.streams(req.path, body)
            return Reply(frames=dialect.frames(turn, body)) if stream else Reply(body=dialect.body(turn, body))
        except Refused as exc:
            self.refusals.append(str(exc))
            return Reply(status=400, body=dialect.error(str(exc)))

    def turn(self, dialect, body: dict) -> dict:
        """What the model says next: {reasoning, proof, text, calls: [(id, name, args)]}."""
        text = json.dumps(body)
        script = next((name for name in SCRIPTS if f"[[{name}]]" in text), None)
        tool = dialect.shell_tool(body)
        turn = {"reasoning": "", "proof": "", "text": "", "calls": []}
        if script is None or tool is None:  # a side request (title, summary, probe)
            turn["text"] = "ok"
            return self.think(turn)
        results = dialect.results(body)
        done = len(results)
        if done >= SCRIPTS[script]:
            seen = sorted(set(re.findall(r"agent-\d+", " ".join(results))))
            turn["text"] = "FINAL ANSWER: the commands printed " + ", ".join(seen or ["nothing"])
        else:
            name, schema = tool
            steps = range(done + 1, SCRIPTS[script] + 1) if script == "parallel" else [done + 1]
            turn["calls"] = [(dialect.call_id(), name, arguments(schema, f"echo agent-{n} > proof-{n}.txt && "
                                                                         f"cat proof-{n}.txt"))
                             for n in steps]
        return self.think(turn)

    def think(self, turn: dict) -> dict:
        """With reasoning on, the turn's thinking and the proof it must come back with."""
        if self.reasoning:
            turn["reasoning"] = f"Thinking {secrets.token_hex(4)} about the next step."
            mac = hmac.new(self.secret, turn["reasoning"].encode(), hashlib.sha256).digest()
            turn["proof"] = base64.b64encode(mac).decode()
            self.issued[turn["proof"]] = {"text": turn["reasoning"], "calls": [c[0] for c in turn["calls"]],
                                          "args": [json.dumps(c[2], sort_keys=True) for c in turn["calls"]]}
        return turn

    def verify(self, proof: str, where: str) -> dict:
        """The issued record for a proof coming back; a proof never issued is a 400."""
        record = self.issued.get(proof)
        if record is None:
            raise Refused(f"{where}: invalid signature: this reasoning was not produced by this model")
        self.returned += 1
        return record

    def call_proofs(self) -> dict:
        """call id -> the proof issued with it."""
        return {call: proof for proof, record in self.issued.items() for call in record["calls"]}


def arguments(schema: dict, command: str) -> dict:
    """Arguments for a shell tool, shaped to its schema: the command where the command goes."""
    props = schema.get("properties") or {}
    out = {}
    for name in schema.get("required") or list(props)[:1]:
        spec = props.get(name) or {}
        kind = spec.get("type")
        if "cmd" in name or "command" in name:
            out[name] = ["bash", "-lc", command] if kind == "array" else command
        elif kind == "string" or kind is None:
            out[name] = "run the task's command"
        elif kind == "boolean":
            out[name] = False
        elif kind in ("integer", "number"):
            out[name] = 10000
    return out


def _pick_tool(tools) -> tuple | None:
    """The first shell tool offered, in SHELL_TOOLS order: (name, schema)."""
    by_name = dict(tools)
    return next(((name, by_name[name]) for name in SHELL_TOOLS if name in by_name), None)


def _text_of(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


# ---------------------------------------------------------------- the four dialects


class Anthropic:
    @staticmethod
    def streams(path, body):
        return bool(body.get("stream"))

    @staticmethod
    def shell_tool(body):
        return _pick_tool((t.get("name"), t.get("input_schema") or {}) for t in body.get("tools") or [])

    @staticmethod
    def results(body):
        return [_text_of(b.get("content")) for m in body.get("messages") or [] if m.get("role") == "user"
                and isinstance(m.get("content"), list) for b in m["content"] if b.get("type") == "tool_result"]

    @staticmethod
    def call_id():
        return "toolu_" + secrets.token_hex(8)

    @staticmethod
    def check(model, body, headers):
        roles = ("user", "assistant", "system") if "mid-conversation-system" in headers.get("anthropic-beta", "") \
            else ("user", "assistant")
        for i, msg in enumerate(body.get("messages") or []):
            if msg.get("role") not in roles:
                raise Refused(f"messages.{i}.role: Input should be {' or '.join(map(repr, roles))}")
        owners = model.call_proofs()
        for i, msg in enumerate(body.get("messages") or []):
            content = msg.get("content") if isinstance(msg.get("content"), list) else []
            for j, block in enumerate(content):
                if block.get("type") == "thinking":
                    model.verify(block.get("signature") or "", f"messages.{i}.content.{j}")
                elif block.get("type") == "redacted_thinking":
                    raise Refused(f"messages.{i}.content.{j}: redacted_thinking this model did not send")
            if msg.get("role") != "assistant":
                continue
            calls = [b["id"] for b in content if b.get("type") == "tool_use" and b.get("id") in owners]
            if calls:
                first = content[0]
                if first.get("type") != "thinking" or first.get("signature") != owners[calls[0]]:
                    raise Refused(f"messages.{i}.content.0.type: Expected `thinking` or `redacted_thinking`, "
                                  f"but found `{first.get('type')}`. When thinking is enabled, a final "
                                  "`assistant` message must start with a thinking block")

    @staticmethod
    def blocks(turn):
        out = [{"type": "thinking", "thinking": turn["reasoning"], "signature": turn["proof"]}] \
            if turn["reasoning"] else []
        if turn["text"]:
            out.append({"type": "text", "text": turn["text"]})
        return out + [{"type": "tool_use", "id": i, "name": n, "input": a} for i, n, a in turn["calls"]]

    @classmethod
    def body(cls, turn, body):
        return {"id": "msg_" + secrets.token_hex(8), "type": "message", "role": "assistant",
                "model": body.get("model"), "content": cls.blocks(turn),
                "stop_reason": "tool_use" if turn["calls"] else "end_turn", "stop_sequence": None,
                "usage": {"input_tokens": 50, "output_tokens": 10, "cache_read_input_tokens": 20}}

    @classmethod
    def frames(cls, turn, body):
        def ev(kind, **fields):
            return f"event: {kind}\ndata: {json.dumps({'type': kind, **fields})}\n\n".encode()
        whole = cls.body(turn, body)
        out = [ev("message_start", message={**whole, "content": [], "stop_reason": None,
                                            "usage": {**whole["usage"], "output_tokens": 1}})]
        for index, block in enumerate(whole["content"]):
            kind = block["type"]
            start = {"thinking": {"type": "thinking", "thinking": "", "signature": ""},
                     "text": {"type": "text", "text": ""}}.get(kind) or {**block, "input": {}}
            out.append(ev("content_block_start", index=index, content_block=start))
            if kind == "thinking":
                out.append(ev("content_block_delta", index=index,
                              delta={"type": "thinking_delta", "thinking": block["thinking"]}))
                out.append(ev("content_block_delta", index=index,
                              delta={"type": "signature_delta", "signature": block["signature"]}))
            elif kind == "text":
                out.append(ev("content_block_delta", index=index, delta={"type": "text_delta", "text": block["text"]}))
            else:
                out.append(ev("content_block_delta", index=index,
                              delta={"type": "input_json_delta", "partial_json": json.dumps(block["input"])}))
            out.append(ev("content_block_stop", index=index))
        out.append(ev("message_delta", delta={"stop_reason": whole["stop_reason"], "stop_sequence": None},
                      usage={"output_tokens": 10}))
        return out + [ev("message_stop")]

    @staticmethod
    def counted(tokens):
        return {"input_tokens": tokens}

    @staticmethod
    def error(message):
        return {"type": "error", "error": {"type": "invalid_request_error", "message": message}}


class Responses:
    @staticmethod
    def streams(path, body):
        return bool(body.get("stream"))

    @staticmethod
    def shell_tool(body):
        tools = []
        for t in body.get("tools") or []:
            tools += t.get("tools") or [] if t.get("type") == "namespace" else [t]
        return _pick_tool((t.get("name"), t.get("parameters") or {}) for t in tools if t.get("type") == "function")

    @staticmethod
    def results(body):
        items = body.get("input") if isinstance(body.get("input"), list) else []
        return [_text_of(i.get("output")) for i in items if i.get("type") in ("function_call_output",
                                                                               "custom_tool_call_output")]

    @staticmethod
    def call_id():
        return "call_" + secrets.token_hex(8)

    @staticmethod
    def check(model, body, headers):
        items = body.get("input") if isinstance(body.get("input"), list) else []
        owners = model.call_proofs()
        replayed = set()
        for i, item in enumerate(items):
            kind = item.get("type") or "message"
            if kind == "message" and item.get("role") not in ("user", "assistant", "system", "developer"):
                raise Refused(f"input[{i}].role: invalid role {item.get('role')!r}")
            if kind == "reasoning":
                model.verify(item.get("encrypted_content") or "", f"input[{i}]")
                replayed.add(item["encrypted_content"])
            elif kind == "function_call" and item.get("call_id") in owners and body.get("store") is False:
                if owners[item["call_id"]] not in replayed:
                    raise Refused(f"Item '{item['call_id']}' of type 'function_call' was provided without its "
                                  "required 'reasoning' item")

    @staticmethod
    def output(turn):
        out = []
        if turn["reasoning"]:
            out.append({"id": "rs_" + secrets.token_hex(8), "type": "reasoning", "encrypted_content": turn["proof"],
                        "summary": [{"type": "summary_text", "text": turn["reasoning"]}]})
        if turn["text"]:
            out.append({"id": "msg_" + secrets.token_hex(8), "type": "message", "status": "completed",
                        "role": "assistant",
                        "content": [{"type": "output_text", "text": turn["text"], "annotations": []}]})
        return out + [{"id": "fc_" + secrets.token_hex(8), "type": "function_call", "status": "completed",
                       "call_id": i, "name": n, "arguments": json.dumps(a)} for i, n, a in turn["calls"]]

    @classmethod
    def body(cls, turn, body):
        return {"id": "resp_" + secrets.token_hex(8), "object": "response", "created_at": 1, "status": "completed",
                "error": None, "incomplete_details": None, "model": body.get("model"), "output": cls.output(turn),
                "usage": {"input_tokens": 50, "input_tokens_details": {"cached_tokens": 20}, "output_tokens": 10,
                          "output_tokens_details": {"reasoning_tokens": 4}, "total_tokens": 60}}

    @classmethod
    def frames(cls, turn, body):
        seq = iter(range(10000))

        def ev(kind, **fields):
            data = {"type": kind, "sequence_number": next(seq), **fields}
            return f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()
        whole = cls.body(turn, body)
        shell = {**whole, "status": "in_progress", "output": [], "usage": None}
        out = [ev("response.created", response=shell), ev("response.in_progress", response=shell)]
        for index, item in enumerate(whole["output"]):
            if item["type"] == "message":
                text = item["content"][0]["text"]
                out.append(ev("response.output_item.added", output_index=index,
                              item={**item, "status": "in_progress", "content": []}))
                out.append(ev("response.content_part.added", item_id=item["id"], output_index=index,
                              content_index=0, part={"type": "output_text", "text": "", "annotations": []}))
                out.append(ev("response.output_text.delta", item_id=item["id"], output_index=index,
                              content_index=0, delta=text))
                out.append(ev("response.output_text.done", item_id=item["id"], output_index=index,
                              content_index=0, text=text))
                out.append(ev("response.content_part.done", item_id=item["id"], output_index=index,
                              content_index=0, part=item["content"][0]))
            elif item["type"] == "reasoning":
                out.append(ev("response.output_item.added", output_index=index,
                              item={**item, "summary": [], "encrypted_content": None}))
                out.append(ev("response.reasoning_summary_text.delta", item_id=item["id"], output_index=index,
                              summary_index=0, delta=item["summary"][0]["text"]))
            else:
                out.append(ev("response.output_item.added", output_index=index,
                              item={**item, "status": "in_progress", "arguments": ""}))
                out.append(ev("response.function_call_arguments.delta", item_id=item["id"], output_index=index,
                              delta=item["arguments"]))
                out.append(ev("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                              arguments=item["arguments"]))
            out.append(ev("response.output_item.done", output_index=index, item=item))
        return out + [ev("response.completed", response=whole)]

    @staticmethod
    def counted(tokens):
        return {"object": "response.input_tokens", "input_tokens": tokens}

    @staticmethod
    def error(message):
        return {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}}


class Chat:
    @staticmethod
    def streams(path, body):
        return bool(body.get("stream"))

    @staticmethod
    def shell_tool(body):
        return _pick_tool(((t.get("function") or {}).get("name"), (t.get("function") or {}).get("parameters") or {})
                          for t in body.get("tools") or [])

    @staticmethod
    def results(body):
        return [_text_of(m.get("content")) for m in body.get("messages") or [] if m.get("role") == "tool"]

    @staticmethod
    def call_id():
        return "call_" + secrets.token_hex(8)

    @staticmethod
    def check(model, body, headers):
        owners = model.call_proofs()
        texts = {record["text"]: proof for proof, record in model.issued.items()}
        for i, msg in enumerate(body.get("messages") or []):
            if msg.get("role") != "assistant":
                continue
            if msg.get("reasoning_content"):
                if msg["reasoning_content"] not in texts:
                    raise Refused(f"messages[{i}].reasoning_content: not produced by this model")
                model.verify(texts[msg["reasoning_content"]], f"messages[{i}]")
            calls = [c.get("id") for c in msg.get("tool_calls") or [] if c.get("id") in owners]
            if calls and model.issued[owners[calls[0]]]["text"] != msg.get("reasoning_content"):
                raise Refused(f"messages[{i}]: the reasoning_content of an assistant message with tool_calls "
                              "must be passed back in thinking mode")

    @staticmethod
    def message(turn):
        msg = {"role": "assistant", "content": turn["text"] or None}
        if turn["reasoning"]:
            msg["reasoning_content"] = turn["reasoning"]
        if turn["calls"]:
            msg["tool_calls"] = [{"id": i, "type": "function", "function": {"name": n, "arguments": json.dumps(a)}}
                                 for i, n, a in turn["calls"]]
        return msg

    @staticmethod
    def usage():
        return {"prompt_tokens": 50, "completion_tokens": 10, "total_tokens": 60,
                "prompt_tokens_details": {"cached_tokens": 20}, "completion_tokens_details": {"reasoning_tokens": 4}}

    @classmethod
    def body(cls, turn, body):
        return {"id": "chatcmpl-" + secrets.token_hex(8), "object": "chat.completion", "created": 1,
                "model": body.get("model"),
                "choices": [{"index": 0, "message": cls.message(turn),
                             "finish_reason": "tool_calls" if turn["calls"] else "stop"}], "usage": cls.usage()}

    @classmethod
    def frames(cls, turn, body):
        def chunk(delta, finish=None, **extra):
            data = {"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 1, "model": body.get("model"),
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}] if delta is not None else [],
                    **extra}
            return b"data: " + json.dumps(data).encode() + b"\n\n"
        out = [chunk({"role": "assistant", "content": ""})]
        if turn["reasoning"]:
            out.append(chunk({"reasoning_content": turn["reasoning"]}))
        if turn["text"]:
            out.append(chunk({"content": turn["text"]}))
        for index, (call_id, name, args) in enumerate(turn["calls"]):
            out.append(chunk({"tool_calls": [{"index": index, "id": call_id, "type": "function",
                                              "function": {"name": name, "arguments": ""}}]}))
            out.append(chunk({"tool_calls": [{"index": index, "function": {"arguments": json.dumps(args)}}]}))
        out.append(chunk({}, "tool_calls" if turn["calls"] else "stop"))
        out.append(chunk(None, usage=cls.usage()))
        return out + [b"data: [DONE]\n\n"]

    @staticmethod
    def error(message):
        return Responses.error(message)


class Gemini:
    @staticmethod
    def streams(path, body):
        return ":streamGenerateContent" in path

    @staticmethod
    def shell_tool(body):
        return _pick_tool((fd.get("name"), fd.get("parametersJsonSchema") or fd.get("parameters") or {})
                          for t in body.get("tools") or [] for fd in t.get("functionDeclarations") or [])

    @staticmethod
    def results(body):
        return [_text_of(p["functionResponse"].get("response")) for c in body.get("contents") or []
                for p in c.get("parts") or [] if "functionResponse" in p]

    @staticmethod
    def call_id():
        return ""  # Gemini's API gives its calls no ids

    @staticmethod
    def check(model, body, headers):
        for t in body.get("tools") or []:
            for fd in t.get("functionDeclarations") or []:
                # `parametersJsonSchema` takes JSON Schema as it is; `parameters` is Gemini's OpenAPI subset.
                bad = _schema_keywords(fd.get("parameters") or {}) & set(GEMINI_REFUSED)
                if bad:
                    raise Refused(f"Invalid JSON payload received. Unknown name {sorted(bad)[0]!r} at "
                                  f"'tools[0].function_declarations.{fd.get('name')}.parameters'")
        owners = {arg: proof for proof, record in model.issued.items() for arg in record["args"]}
        for i, content in enumerate(body.get("contents") or []):
            if content.get("role") != "model":
                continue
            calls = [p for p in content.get("parts") or [] if "functionCall" in p]
            for p in content.get("parts") or []:
                sig = p.get("thoughtSignature")
                if sig and sig != GEMINI_SKIP:
                    model.verify(sig, f"contents[{i}]")
            if calls:
                first = calls[0]
                args = json.dumps(first["functionCall"].get("args") or {}, sort_keys=True)
                signature = first.get("thoughtSignature")
                if (args in owners and signature != owners[args]) or (model.reasoning and not signature):
                    raise Refused(f"contents[{i}].parts: Function call is missing a thought_signature in "
                                  "functionCall parts; the first functionCall of each step needs its signature")

    @staticmethod
    def parts(turn):
        out = [{"text": turn["reasoning"], "thought": True}] if turn["reasoning"] else []
        if turn["text"]:
            out.append({"text": turn["text"]})
        out += [{"functionCall": {"name": n, "args": a}} for _, n, a in turn["calls"]]
        if turn["proof"]:  # Gemini 3: on the first function call, else on the last part
            target = next((p for p in out if "functionCall" in p), out[-1])
            target["thoughtSignature"] = turn["proof"]
        return out

    @staticmethod
    def usage():
        return {"promptTokenCount": 50, "cachedContentTokenCount": 20, "candidatesTokenCount": 6,
                "thoughtsTokenCount": 4, "totalTokenCount": 60}

    @classmethod
    def body(cls, turn, body):
        return {"candidates": [{"content": {"role": "model", "parts": cls.parts(turn)}, "finishReason": "STOP",
                                "index": 0}], "usageMetadata": cls.usage(), "modelVersion": "gemini-fake",
                "responseId": secrets.token_hex(8)}

    @classmethod
    def frames(cls, turn, body):
        whole = cls.body(turn, body)
        parts = whole["candidates"][0]["content"]["parts"]
        out = []
        for k, part in enumerate(parts):
            frame = {"candidates": [{"content": {"role": "model", "parts": [part]}, "index": 0}],
                     "modelVersion": "gemini-fake", "responseId": whole["responseId"]}
            if k == len(parts) - 1:
                frame["candidates"][0]["finishReason"] = "STOP"
                frame["usageMetadata"] = cls.usage()
            out.append(b"data: " + json.dumps(frame).encode() + b"\r\n\r\n")
        return out

    @staticmethod
    def counted(tokens):
        return {"totalTokens": tokens}

    @staticmethod
    def error(message):
        return {"error": {"code": 400, "message": message, "status": "INVALID_ARGUMENT"}}


def _schema_keywords(schema) -> set:
    """Every key used anywhere in a JSON schema."""
    if isinstance(schema, list):
        return set().union(*map(_schema_keywords, schema)) if schema else set()
    if not isinstance(schema, dict):
        return set()
    keys = set(schema)
    for key, value in schema.items():
        if key in ("properties", "$defs", "definitions") and isinstance(value, dict):
            keys |= set().union(*map(_schema_keywords, value.values())) if value else set()
        elif isinstance(value, (dict, list)):
            keys |= _schema_keywords(value)
    return keys


DIALECTS = {"/v1/messages": Anthropic, "/responses": Responses, "/chat/completions": Chat, "/models/": Gemini}
PROTOCOL_PATHS = {"anthropic": ("anthropic", ""), "openai": ("openai", "/v1"), "responses": ("openai", "/v1"),
                  "google": ("google", "")}
