"""Guardrails: secrets and personal data caught in both directions, dangerous commands, agent loops.

The `guardrails:` section (the Rust BitRouter's schema, so its configs load; docs/guardrails.md) compiles once,
at configuration load, into a Policy. One scanner, Policy.scan, checks text going up (client ->
provider) and down (provider -> client); server.py applies it to every protocol through walks
of the JSON bodies (walk_json), so pass-through and translated traffic are guarded alike, and a
StreamGuard holds stream frames back only while a match may still be completing in the next chunk.
BitRouter's own keys are always redacted, whatever the configuration says.
"""

import json
import re
from dataclasses import dataclass, field

import regex

UPGOING, DOWNGOING = "upgoing", "downgoing"
DIRECTIONS = (UPGOING, DOWNGOING, "both")
ACTIONS = ("warn", "redact", "block")
REDACTED = "[REDACTED]"
HELP_LINK = "https://github.com/bitrouter/bitrouter"
OWN_KEYS = "bitrouter_keys"  # the always-on rule for BitRouter's own keys (not configurable)
MAX_HOLD = 16384  # characters a stream may hold back for one unfinished match before it is decided
# Agents re-send the whole conversation every turn: each text is scanned once and the outcome
# remembered, up to MEMO_CHARS characters (plus MEMO_ENTRY a text), the oldest forgotten first.
MEMO_CHARS, MEMO_ENTRY = 4_000_000, 64

# Built-in patterns: the Rust BitRouter's names, descriptions and native directions. A built-in is
# also applied in the other direction when that direction's map gives it an action. Each regex
# comes with its hint: characters of which every match contains at least one, so that a
# memchr-fast `in` test skips the regex on text without any (docs/performance.md).
BUILTIN = {
    "api_keys": ("API keys from common providers", UPGOING, [
        ("-", r"\bsk-[A-Za-z0-9_-]{20,}"),  # OpenAI (sk-, sk-proj-), Anthropic (sk-ant-)...
        ("", r"\bAKIA[0-9A-Z]{16}\b"), ("", r"\bAIza[0-9A-Za-z_-]{35}"),  # AWS access key id, Google
        ("_", r"\bgh(?:[pousr]_[A-Za-z0-9]{36,}|ithub_pat_[A-Za-z0-9_]{22,})"),  # GitHub
        ("_", r"(?<=\b([spr]))k_(?:live|test)_[A-Za-z0-9]{20,}"),  # Stripe
        ("-", r"\bxox[abprs]-[A-Za-z0-9-]{10,}"),  # Slack
    ]),
    "private_keys": ("PEM-encoded private keys", UPGOING, [
        # The whole block when its end is there (the header alone otherwise), not just the header.
        ("-", r"-----BEGIN (?:RSA |EC |DSA |OPENSSH |ED25519 |ENCRYPTED |PGP )?PRIVATE KEY(?: BLOCK)?-----"
              r"(?:[A-Za-z0-9+/=\s:,.-]{0,8192}?-----END (?:RSA |EC |DSA |OPENSSH |ED25519 |ENCRYPTED |PGP )?"
              r"PRIVATE KEY(?: BLOCK)?-----)?"),
    ]),
    "credentials": ("Inline credentials and connection strings", UPGOING, [
        ("=:", r"(?i)passw(?:or)?d\w*[\"']?\s*[:=]\s*[\"']?(?!\[REDACTED\])[^\s\"'<>,;`\\]{4,}"),
        ("=:", r"(?i)secret\w*[\"']?\s*[:=]\s*[\"']?(?!\[REDACTED\])[^\s\"'<>,;`\\]{4,}"),
        ("", r"(?i)\bbasic\s+(?!\[REDACTED\])[A-Za-z0-9+/]{16,}={0,2}"),
        ("", r"(?i)\bbearer\s+(?!\[REDACTED\])[A-Za-z0-9._~+/-]{16,}=*"),
        (":", r"(?i)\b(?:postgres(?:ql)?|mysql|mariadb|mongodb(?:\+srv)?|rediss?|amqps?)://[^\s:/@\"']+:[^\s@/\"']+@"),
    ]),
    "pii_emails": ("Email addresses", UPGOING, [
        # Led by the @ (a regex led by a character class tries every position of the text); the
        # local part is a captured lookbehind, and a match spans from its earliest group.
        ("@", r"(?<=(?<![A-Za-z0-9._%+-])([A-Za-z0-9._%+-]{1,64}))@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"),
    ]),
    "pii_phone_numbers": ("Phone numbers", UPGOING, [
        # Groups must be separated (or the number start with +country): a bare run of ten digits
        # is a timestamp or an id far more often than a phone number. The boundary checks come
        # after the digits, where they cost nothing on text without numbers.
        (".-", r"[0-9]{3}[.-][0-9]{3}[.-][0-9]{4}(?![\w.-])(?<![\w.+-][0-9]{3}[.-][0-9]{3}[.-][0-9]{4})"),
        ("(", r"\([0-9]{3}\) ?[0-9]{3}[ .-][0-9]{4}(?![\w.-])"),
        ("+", r"\+[0-9]{1,3}[ .-]?(?:[0-9]{3}[ .-]?){2}[0-9]{4}(?![\w.-])"),
    ]),
    "ip_addresses": ("IPv4 addresses (non-localhost)", UPGOING, [
        # Not 127.x, 0.x or 255.x, and not a version: v1.2.3.4, ==1.2.3.4, @1.2.3.4, "version 1.2.3.4".
        # Digits first, the checks in a lookbehind after them, for speed (see pii_emails).
        (".", r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}(?![\w.-])(?<=(?<![\w.@~^-])(?<!==)"
              r"(?<!(?i:version|release|build|ver)\W{0,2})(?!127\.|0\.|255\.)"
              r"(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9]))"),
    ]),
    "suspicious_commands": ("Dangerous shell commands", DOWNGOING, [
        ("-", r"\brm\s+(?:-[A-Za-z]+\s+|--(?:recursive|force|no-preserve-root)\s+)+(?:/|~/?|\$HOME/?|/\*)(?=$|[\s;&|)\"'`])"),
        ("", r"\bmkfs(?:\.\w+)?\s"),
        ("=", r"\bdd\s[^\n;|]{0,200}\bof=/dev/(?!null\b|zero\b|stdout\b|stderr\b)"),
        (":", r":\(\)\s*\{\s*:\s*\|\s*:\s*&\s*\}\s*;\s*:"),  # the fork bomb
        ("7", r"\bchmod\s+(?:-\w+\s+)*-R\s+(?:-\w+\s+)*0?777\s+/(?=$|[\s;&|])"),
        ("|", r"\bcurl\s[^\n|;]{0,300}\|\s*(?:sudo\s+)?(?:ba|z|da|k)?sh\b"),
        ("|", r"\bwget\s[^\n|;]{0,300}\|\s*(?:sudo\s+)?(?:ba|z|da|k)?sh\b"),
        (">", r">\s*/dev/[sh]d[a-z]\b"),
    ]),
}

DEFAULTS = {"enabled": True, "disabled_patterns": [], "custom_patterns": [], UPGOING: {}, DOWNGOING: {},
            "custom_upgoing": {}, "custom_downgoing": {}, "block_message": {}, "loop": {}}
BLOCK_MESSAGE_DEFAULTS = {"include_details": True, "include_help_link": True}
LOOP_DEFAULTS = {"enabled": True, "warn_after": 5, "stop_after": 0, "max_session_requests": 0,
                 "max_session_spend_usd": 0}

# Each protocol declares where it carries conversation text (Protocol.text_fields, dotted key
# paths from the body). Everything below them is walked, except the OPAQUE keys: base64
# payloads, signatures and identifiers that must reach the other side intact, and Anthropic's
# signed `thinking` (a changed thinking block is refused when it is sent back).
OPAQUE = frozenset(("data", "file_data", "signature", "thoughtSignature", "thought_signature",
                    "encrypted_content", "url", "image_url", "file_url", "fileUri", "file_uri", "file_id",
                    "id", "call_id", "tool_use_id", "tool_call_id", "item_id", "type", "role", "name",
                    "mimeType", "mime_type", "media_type", "status", "cache_control", "finish_reason",
                    "finishReason", "stop_reason", "logprobs", "annotations", "thinking"))
STREAM_INDEXES = ("index", "output_index", "content_index", "summary_index")  # which block a delta extends


SHORT_SECRET = 8  # characters: a shorter key is found (and masked) as a whole token only


def secret_pattern(secret: str) -> str:
    """The regular expression a key is found by: anywhere, or (shorter than SHORT_SECRET) only
    standing alone, not inside a longer run of key characters (a key `k` is still never
    shown, but the k in every other word stays)."""
    if len(secret) >= SHORT_SECRET:
        return re.escape(secret)
    edge = r"A-Za-z0-9_\-"
    return rf"(?<![{edge}]){re.escape(secret)}(?![{edge}])"


class GuardrailError(Exception):
    """A request or reply that a guardrail blocks; the message says which patterns, never what matched."""


@dataclass(eq=False)
class Rule:
    """One compiled pattern with its action in one direction."""

    name: str
    description: str
    patterns: list  # [(hint, compiled regex)]; hint "" when there is none
    action: str
    # Per pattern, the literal every match (and every partial match) starts with, as
    # (text, ignore case), or None when it has none: a stream skips a pattern whose literal
    # is neither in the text nor begun at its end (StreamGuard._release).
    leads: list = field(default_factory=list)

    def __post_init__(self):
        if not self.leads:
            self.leads = [lead(pattern.pattern) for _, pattern in self.patterns]


@dataclass
class Hit:
    """One pattern found in one place: what a log line, an event and a counter carry (never the match)."""

    pattern: str
    direction: str
    action: str
    where: str
    count: int = 1

    def as_dict(self) -> dict:
        """The hit as JSON-ready data."""
        return dict(vars(self))


@dataclass
class Policy:
    """The compiled `guardrails:` section: rules per direction, the block message, the loop guard."""

    rules: dict  # direction -> [Rule]
    include_details: bool = True
    include_help_link: bool = True
    loop: dict = field(default_factory=lambda: dict(LOOP_DEFAULTS))
    memo: dict = field(default_factory=dict, repr=False)  # (direction, text) -> (result, block hits, message)
    memo_chars: int = 0

    def __post_init__(self):
        # direction -> [(literal as JSON spells it, ignore case)], or None when a pattern has no
        # literal that a JSON text must spell as it is (see may_match)
        self.literals = {direction: _json_literals(rules) for direction, rules in self.rules.items()}
        # (search of a text, search of its casefold) for the downgoing literals, or None (see may_begin)
        self.stream_starts = _starts_search(self.rules[DOWNGOING])

    def may_match(self, body, direction: str) -> bool:
        """Whether a rule of the direction could match a string of this JSON text (bytes or str).

        False means no string in it needs decoding or scanning: every pattern starts with a
        literal (`lead`) and none is in the text. That is exact because JSON spells such a
        literal as it is, unless the text uses \\u or \\/ escapes (then this says True).
        """
        literals = self.literals[direction]
        if literals is None:
            return True
        body = body.encode() if isinstance(body, str) else body
        if b"\\u" in body or b"\\/" in body:
            return True
        folded = None
        for literal, fold in literals:
            if fold:
                if folded is None:
                    if not body.isascii():  # (?i) also matches a few non-ASCII letters (the long s...)
                        return True
                    folded = body.lower()
                if literal in folded:
                    return True
            elif literal in body:
                return True
        return False

    def may_begin(self, text: str) -> bool:
        """Whether a downgoing pattern could match in a stream's text, or begin at its end.

        False means every downgoing pattern starts with a literal (`lead`), and none is in the
        text nor begun by its last characters: one search decides what a loop over the
        patterns would (StreamGuard scans each frame's text as it arrives).
        """
        if self.stream_starts is None:
            return True
        plain, folded = self.stream_starts
        return bool(plain and plain.search(text) or folded and folded.search(text.casefold()))

    def scan(self, text: str, direction: str, where: str, hits: list) -> str:
        """The text after every rule of the direction ran on it; hits are appended to `hits`.

        Rules run in order, BitRouter's own keys first, and later rules see earlier redactions;
        a block raises GuardrailError once the text is fully checked (so every hit is reported).
        A text seen before gets the same outcome without a scan; only its blocks are reported
        again (a warning about history the agent re-sends each turn would be noise).
        """
        key = (direction, text)
        remembered = self.memo.get(key)
        if remembered is not None:
            result, blocking, message = remembered
            if message:
                hits += blocking
                raise GuardrailError(message)
            return result
        before = len(hits)
        try:
            result = self._scan(text, direction, where, hits)
        except GuardrailError as exc:
            self._remember(key, (None, [h for h in hits[before:] if h.action == "block"], str(exc)))
            raise
        self._remember(key, (result, [], ""))
        return result

    def _remember(self, key: tuple, outcome: tuple) -> None:
        size = len(key[1]) + MEMO_ENTRY
        while self.memo and self.memo_chars + size > MEMO_CHARS:
            oldest = next(iter(self.memo))
            del self.memo[oldest]
            self.memo_chars -= len(oldest[1]) + MEMO_ENTRY
        self.memo[key] = outcome
        self.memo_chars += size

    def _scan(self, text: str, direction: str, where: str, hits: list) -> str:
        blocked = []
        for rule in self.rules[direction]:
            count = 0
            for hint, pattern in rule.patterns:
                if hint and not any(map(text.__contains__, hint)):
                    continue
                if rule.action == "redact":
                    spans = [span(m) for m in pattern.finditer(text)]
                    text, found = _redacted([text], spans, 0)[0], len(spans)
                else:
                    found = 1 if pattern.search(text) else 0
                count += found
            if count:
                hits.append(Hit(rule.name, direction, rule.action, spelled(where), count))
                if rule.action == "block":
                    blocked.append(rule)
        if blocked:
            raise GuardrailError(self.block_message(direction, spelled(where), blocked))
        return text

    def walk(self, body: dict, fields: tuple, direction: str, hits: list) -> bool:
        """Scan (and redact in place) every conversation string under `fields`; True if any changed."""
        changed = False
        for container, key, where in strings(body, fields):
            value = container[key]
            new = self.scan(value, direction, where, hits)
            if new != value:
                container[key], changed = new, True
        return changed

    def block_message(self, direction: str, where: str, rules: list) -> str:
        """`guardrail blocked upgoing content (messages[0].content): PEM-encoded private keys...`."""
        text = f"guardrail blocked {direction} content ({where})"
        if self.include_details:
            text += ": " + ", ".join(f"{r.description} ({r.name})" for r in rules)
        if self.include_help_link:
            text += f". For more information, see {HELP_LINK}"
        return text

    def stream_guard(self, fields: tuple, error_frame, report) -> "StreamGuard | None":
        """A guard for one downgoing SSE stream whose frames carry text under `fields`, or None when
        no rule looks at streams (or the protocol names no stream fields: it is not SSE)."""
        return StreamGuard(self, fields, error_frame, report) if self.rules[DOWNGOING] and fields else None


def compile_policy(raw, fail, secrets=()) -> Policy:
    """Validate a `guardrails:` mapping and compile it; fail(where, message) raises for bad input.

    secrets are BitRouter's own keys: redacted in both directions even with `enabled: false`.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        fail("guardrails", f"must be a mapping, got {type(raw).__name__}")
    for key in raw:
        if key not in DEFAULTS:
            fail(f"guardrails.{key}", f"unknown key; known keys: {', '.join(DEFAULTS)}")
    cfg = {**DEFAULTS, **{k: v for k, v in raw.items() if v is not None}}
    if not isinstance(cfg["enabled"], bool):
        fail("guardrails.enabled", "must be true or false")
    disabled = _names(cfg["disabled_patterns"], "guardrails.disabled_patterns", BUILTIN, fail)
    custom = _custom_patterns(cfg["custom_patterns"], fail)
    actions = {d: _actions(cfg[d], f"guardrails.{d}", BUILTIN, fail) for d in (UPGOING, DOWNGOING)}
    custom_actions = {d: _actions(cfg["custom_" + d], f"guardrails.custom_{d}", custom, fail)
                      for d in (UPGOING, DOWNGOING)}
    block = _section(cfg["block_message"], "guardrails.block_message", BLOCK_MESSAGE_DEFAULTS, fail)
    loop = _section(cfg["loop"], "guardrails.loop", LOOP_DEFAULTS, fail)
    rules = {UPGOING: [], DOWNGOING: []}
    own = sorted({s for s in secrets if s}, key=len, reverse=True)
    for direction in rules:
        if own:
            rules[direction].append(Rule(OWN_KEYS, "BitRouter's own keys",
                                         [("", regex.compile(secret_pattern(key))) for key in own], "redact",
                                         [(key, False) for key in own]))  # a match starts with the key itself
        if not cfg["enabled"]:
            continue
        for name, (description, native, patterns) in BUILTIN.items():
            if name not in disabled and (native == direction or name in actions[direction]):
                rules[direction].append(Rule(name, description, [(h, regex.compile(p)) for h, p in patterns],
                                             actions[direction].get(name, "warn")))
        for name, (pattern, declared) in custom.items():
            if declared in (direction, "both") or name in custom_actions[direction]:
                rules[direction].append(Rule(name, f"custom pattern '{name}'", [("", pattern)],
                                             custom_actions[direction].get(name, "warn")))
    loop["enabled"] = loop["enabled"] and cfg["enabled"]
    return Policy(rules, block["include_details"], block["include_help_link"], loop)


def strings(body: dict, paths) -> list:
    """(container, key, where) for every conversation string under the dotted key paths of body
    (where: the string's place, as walk_json gives it)."""
    found = []
    for path in paths:
        node, names = body, path.split(".")
        for name in names[:-1]:
            node = node.get(name) if isinstance(node, dict) else None
        if isinstance(node, dict) and names[-1] in node:
            found += walk_json(node, names[-1], names[-1])
    return found


def walk_json(node, key, where: str) -> list:
    """(container, key, where) for every string under node[key], in document order, skipping OPAQUE keys.

    A string's place is where (the name of node[key]) for node[key] itself, else the pair
    (its parent's place, its key): `spelled` writes it out as `messages[3].content`, which
    only hits need, so a long conversation's walk builds no text for the thousands of others.
    """
    found, todo = [], [(node, key, where)]
    push = todo.append  # plain loops: a comprehension per container is a call of its own (a quarter of the walk)
    while todo:  # a stack, not recursion: cheaper per node, and any depth
        node, key, where = todo.pop()
        value = node[key]
        if isinstance(value, str):
            if value:
                found.append((node, key, where))
        elif isinstance(value, dict):
            for name in reversed(value):
                if name not in OPAQUE:
                    push((value, name, (where, name)))
        elif isinstance(value, list):
            for i in range(len(value) - 1, -1, -1):
                push((value, i, (where, i)))
    return found


def spelled(where) -> str:
    """A place from walk_json written out: `messages[3].content`."""
    steps = []
    while isinstance(where, tuple):
        where, key = where
        steps.append(f"[{key}]" if isinstance(key, int) else f".{key}")
    return where + "".join(reversed(steps))


def lead(source: str) -> tuple[str, bool] | None:
    """The literal text every match of a regex starts with, and whether case is ignored; None if unsure.

    Understood: an optional leading (?i) and \\b, then plain characters or escaped punctuation;
    a quantifier that may drop the last of them drops it; any top-level alternation means None.
    """
    if _top_level_alternation(source) or regex.search(r"\(\?[a-zA-Z]*[a-zA-Z]", source[4:] if source.startswith("(?i)") else source):
        return None  # alternatives, or flags that change what a literal means (only a leading (?i) is understood)
    m = _LEAD.match(source)
    if not m or not m.group(2):
        return None
    literal = regex.sub(r"\\(.)", r"\1", m.group(2))
    if source[m.end():m.end() + 1] in ("?", "*", "{"):
        literal = literal[:-1]
    if not literal:
        return None
    fold = bool(m.group(1))  # casefold() folds at least everything (?i) matches to these letters
    return (literal.casefold() if fold else literal), fold


_LEAD = regex.compile(r"(\(\?i\))?(?:\\b)?((?:[A-Za-z0-9 _:>/=@-]|\\[-()+.\[\]{}|*?^$/])+)")


def _starts_search(rules: list) -> tuple | None:
    """(search, search of the casefolded text) finding every leading literal of the rules'
    patterns in a text, and every beginning of one that ends it; None for a search no literal
    needs, and None instead of both when a pattern has no literal."""
    leads = [first for rule in rules for first in rule.leads]
    if None in leads:
        return None

    def search(literals: list):
        alternatives = [re.escape(literal) for literal in literals]
        # its beginnings at the end: a match the next frame may complete
        alternatives += [f"(?:{'|'.join(re.escape(literal[:n]) for n in range(1, len(literal)))})\\Z"
                         for literal in literals if len(literal) > 1]
        return re.compile("|".join(alternatives)) if alternatives else None
    return search([text for text, fold in leads if not fold]), search([text for text, fold in leads if fold])


def _json_literals(rules: list) -> list | None:
    """The leading literals of every pattern of the rules, as bytes a JSON text spells them in;
    None when one has none, or one that JSON would escape (a quote, a backslash, a control or
    non-ASCII character)."""
    found = []
    for rule in rules:
        for first in rule.leads:
            if first is None or not first[0].isascii() or not first[0].isprintable() or any(c in first[0] for c in '"\\'):
                return None
            found.append((first[0].encode(), first[1]))
    return found


def _top_level_alternation(source: str) -> bool:
    """Whether a regex has a | outside every group and character class."""
    depth, i, in_class = 0, 0, False
    while i < len(source):
        c = source[i]
        if c == "\\":
            i += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "|" and depth == 0:
            return True
        i += 1
    return False


def _begins_at_end(text: str, literal: str) -> bool:
    """Whether text ends with a beginning of literal (a match that the next frame may complete)."""
    tail = text[1 - len(literal):] if len(literal) > 1 else ""  # where the cut-off beginning would be
    at = tail.find(literal[0])
    while at != -1:
        if literal.startswith(tail[at:]):
            return True
        at = tail.find(literal[0], at + 1)
    return False


def span(match) -> tuple[int, int]:
    """A match's extent: from its earliest group (a captured lookbehind counts) to its end."""
    if len(match.regs) == 1:
        return match.regs[0]
    return min(start for start, _ in match.regs if start >= 0), match.end()


def session_of(body: dict, headers) -> str:
    """The agent session a request belongs to, or "" when the client names none.

    x-bitrouter-session for any client; Claude Code's session id (its header, or the JSON in
    metadata.user_id, or the older `..._session_<uuid>` form); Codex's session_id header or
    client_metadata.session_id. Gemini CLI sends none on the Gemini API.
    """
    for name in ("x-bitrouter-session", "x-claude-code-session-id", "session_id"):
        value = headers.get(name)
        if value:
            return str(value)[:200]
    meta = body.get("client_metadata")
    if isinstance(meta, dict) and meta.get("session_id"):
        return str(meta["session_id"])[:200]
    user = (body.get("metadata") or {}).get("user_id") if isinstance(body.get("metadata"), dict) else None
    if isinstance(user, str) and user:
        if user.startswith("{"):
            try:
                found = json.loads(user).get("session_id")
            except (ValueError, AttributeError):
                found = None
            if found:
                return str(found)[:200]
        match = re.search(r"_session_([0-9A-Za-z-]+)$", user)
        if match:
            return match.group(1)
    return ""


def loop_verdict(messages, loop: dict) -> tuple[str, str] | None:
    """("warn" | "block", message) when the conversation ends in a loop (guardrails.loop), else None."""
    calls, call, errors, error = repeats(messages)
    worst, stop, warn = max(calls, errors), loop["stop_after"], loop["warn_after"]
    what = (f"made the same tool call {call} {calls} times in a row" if calls >= errors else
            f"got the same tool error {errors} times in a row ({error!r})")
    if stop and worst >= stop:
        return "block", (f"BitRouter stopped this agent session: it {what} "
                         f"(guardrails.loop.stop_after is {stop}). Change the approach, or tell the "
                         "agent what to do differently, then continue.")
    if warn and worst >= warn:
        return "warn", f"agent loop: the session {what} (guardrails.loop.warn_after is {warn})"
    return None


def repeats(messages) -> tuple[int, str, int, str]:
    """How the unified conversation ends: (identical tool calls in a row, that call, identical tool
    errors in a row, that error). A user turn with text of its own, or an assistant turn without
    a tool call, ends both runs."""
    calls, call, errors, error = 0, None, 0, None
    calls_open = errors_open = True
    for msg in reversed(messages):
        if msg.role == "user" and any(p.kind == "text" and p.text.strip() for p in msg.parts):
            break
        if msg.role == "assistant":
            signature = tuple(sorted((p.name, _canonical(p.arguments)) for p in msg.parts if p.kind == "tool_call"))
            if not signature:
                break
            call = call or signature
            calls_open = calls_open and signature == call
            calls += calls_open
        elif errors_open:
            for p in reversed([p for p in msg.parts if p.kind == "tool_result"]):
                text = "".join(c.text for c in p.content)
                errors_open = p.is_error and error in (None, text)
                if not errors_open:
                    break
                error, errors = text, errors + 1
        if not (calls_open or errors_open):
            break
    described = ", ".join(f"{name}({args})" for name, args in call or ())
    return calls, described, errors, (error or "")[:200]


class Sessions:
    """Requests and spend per agent session, for guardrails.loop's per-session limits.

    Bounded: past `keep` sessions the least recently seen one is forgotten.
    """

    def __init__(self, keep: int = 10000):
        self.keep = keep
        self.seen = {}  # session -> [requests, cost in micro-USD]; dicts keep insertion order

    def admit(self, session: str, loop: dict) -> str:
        """Count one request of a session; the refusal message when it is over a limit, else ""."""
        if not session:
            return ""
        counts = self.seen.pop(session, None) or [0, 0]
        self.seen[session] = counts  # most recently seen last
        if len(self.seen) > self.keep:
            del self.seen[next(iter(self.seen))]
        limit, budget = loop["max_session_requests"], loop["max_session_spend_usd"]
        if limit and counts[0] >= limit:
            return (f"BitRouter stopped this agent session: it has made {counts[0]} requests "
                    f"(guardrails.loop.max_session_requests is {limit}); start a new session to go on")
        if budget and counts[1] >= budget * 1_000_000:
            return (f"BitRouter stopped this agent session: it has spent ${counts[1] / 1e6:.4f} "
                    f"(guardrails.loop.max_session_spend_usd is {budget}); start a new session to go on")
        counts[0] += 1
        return ""

    def finished(self, record) -> None:
        """Add a finished request's cost to its session (a Metrics listener)."""
        counts = self.seen.get(record.session) if record.session else None
        if counts is not None:
            counts[1] += record.cost_micro_usd


class StreamGuard:
    """Downgoing guard for one SSE stream in the client's protocol: raw chunks in, safe frames out.

    A frame whose text could still be the start of a match (a partial match at the end of the
    block's text held so far) waits for the next frame of the same block; frames are never
    merged, a redaction that spans frames edits each of them, and a block drops what was held
    and ends the stream with the protocol's in-band error.
    """

    def __init__(self, policy: Policy, fields: tuple, error_frame, report):
        self.policy = policy
        self.fields = fields
        self.error_frame = error_frame  # (status, message) -> bytes
        self.report = report  # (hits) -> None
        # (rule, pattern, leading literal or None, ignore case) for every downgoing pattern
        self.scans = [(rule, pattern, *(first or (None, False)))
                      for rule in policy.rules[DOWNGOING] for (_, pattern), first in zip(rule.patterns, rule.leads)]
        self.buffer = b""
        self.held = []  # frames of the open block (and pings that arrived after them)
        self.block_key = None
        self.context = ""  # the released end of the open block's text, for lookbehinds
        self.blocked = ""  # the block message, once the stream is blocked

    def feed(self, chunk: bytes) -> bytes:
        """Take raw stream bytes; return the bytes that are safe to send now."""
        buffer, start, out = self.buffer + chunk, 0, []
        while not self.blocked:  # frames cut from where the last one ended: the rest is not copied per frame
            end, size = _frame_end(buffer, start)
            if end < 0:
                break
            out.append(self._frame(buffer[start:end + size]))
            start = end + size
        self.buffer = buffer[start:]
        return b"".join(out)

    def close(self) -> bytes:
        """The end of the stream: everything held is decided and sent (or blocked)."""
        out = self._frame(self.buffer + b"\n\n") if self.buffer.strip() and not self.blocked else b""
        self.buffer = b""
        return out + (b"" if self.blocked else self._release(final=True))

    # ------------------------------------------------------------ helpers

    def _frame(self, raw: bytes) -> bytes:
        frame = _Frame(raw, self.fields)
        if not frame.strings:  # pings wait behind what is held; any other frame ends the block
            if self.held and frame.passive:
                self.held.append(frame)
                return b""
            return self._release(final=True) + (b"" if self.blocked else raw)
        if len(frame.strings) == 1 and frame.key == self.block_key:
            self.held.append(frame)
            return self._release(final=False)
        out = self._release(final=True)
        if self.blocked:
            return out
        if len(frame.strings) > 1:  # a complete object (a done event, a whole reply): decided at once
            return out + self._whole(frame)
        self.held, self.block_key, self.context = [frame], frame.key, ""
        return out + self._release(final=False)

    def _whole(self, frame: "_Frame") -> bytes:
        hits = []
        try:
            texts = [self.policy.scan(frame.text(i), DOWNGOING, "stream", hits) for i in range(len(frame.strings))]
        except GuardrailError as exc:
            self.blocked = str(exc)
        if hits:
            self.report(hits)
        return self.error_frame(400, self.blocked) if self.blocked else frame.encoded(texts)

    def _release(self, final: bool) -> bytes:
        """Send the held frames that no unfinished match reaches; all of them when final."""
        if not self.held:
            return b""
        joined = "".join(frame.text(0) for frame in self.held if frame.strings)
        final = final or len(joined) > MAX_HOLD
        hold_from, found = len(joined), {}
        base = len(self.context)
        scanned = self.context + joined
        folded = None
        scans = self.scans if self.policy.may_begin(joined) else ()  # the usual text: no pattern can be in it
        for rule, pattern, literal, fold in scans:  # no hints: a partial match may lack its hint yet
            if literal is not None:
                if fold and folded is None:
                    folded = joined.casefold()
                text = folded if fold else joined
                if literal not in text and (len(literal) == 1 or literal[0] not in text[1 - len(literal):]
                                            or not _begins_at_end(text, literal)):
                    continue  # no match nor partial match can be in this text
            for m in pattern.finditer(scanned, base, partial=not final):
                start, end = span(m)
                start, end = max(start, base) - base, end - base
                if not final and (m.partial or end == len(joined)):
                    hold_from = min(hold_from, start)  # may still grow into a match: wait for more
                else:
                    found.setdefault(rule, []).append((start, end))
        if not found and hold_from == len(joined):  # the usual frame: nothing found, nothing to wait for
            out = b"".join(frame.raw for frame in self.held)
            self.held = []
            if final:
                self.block_key, self.context = None, ""
            else:
                self.context = (self.context + joined)[-64:]
            return out
        cut = self._cut(hold_from, found)
        hits, spans, blocked = [], [], []
        for rule, matches in found.items():
            inside = [span for span in matches if span[1] <= cut]
            if inside:
                hits.append(Hit(rule.name, DOWNGOING, rule.action, "stream", len(inside)))
                spans += inside if rule.action == "redact" else []
                blocked += [rule] if rule.action == "block" else []
        if hits:
            self.report(hits)
        if blocked:
            self.blocked = self.policy.block_message(DOWNGOING, "stream", blocked)
            self.held = []
            return self.error_frame(400, self.blocked)
        out, offset, keep = [], 0, []
        for frame in self.held:
            text = frame.text(0) if frame.strings else ""
            if keep or offset + len(text) > cut:
                keep.append(frame)
                continue
            out.append(frame.encoded(_redacted([text], spans, offset)) if frame.strings else frame.raw)
            offset += len(text)
        self.context = (self.context + joined[:cut])[-64:]
        self.held = keep
        if final:
            self.block_key, self.context = None, ""
        return b"".join(out)

    def _cut(self, hold_from: int, found: dict) -> int:
        """The end of the last held frame that ends by hold_from with no match across it."""
        best, offset = 0, 0
        for frame in self.held:
            offset += len(frame.text(0)) if frame.strings else 0
            if offset > hold_from:
                break
            if not any(s < offset < e for matches in found.values() for s, e in matches):
                best = offset
        return best


class _Frame:
    """One SSE frame: its raw bytes, event name, parsed JSON and the conversation strings in it."""

    def __init__(self, raw: bytes, fields):
        self.raw, self.event, self.data, self.strings, self.key = raw, "", None, [], None
        text = raw.decode("utf-8", "replace")
        if text.startswith("data:") and "\r" not in text and text.count("\n") == 2:  # the usual frame: one data line
            data = [text[5:-2].removeprefix(" ")]
        else:
            lines = text.splitlines()
            self.event = next((line[6:].strip() for line in lines if line.startswith("event:")), "")
            data = [line[5:].removeprefix(" ") for line in lines if line.startswith("data:")]
        try:
            self.data = _json_value("\n".join(data)) if data else None
        except ValueError:
            pass
        if not isinstance(self.data, dict):
            self.passive = not data  # a comment (keep-alive)
            return
        self.passive = self.event == "ping" or self.data.get("type") == "ping"
        self.strings = strings(self.data, fields)
        if len(self.strings) == 1:
            container, _, where = self.strings[0]
            inner = container.get("index") if isinstance(container, dict) else None
            self.key = (self.event, self.data.get("type"), where, tuple(map(self.data.get, STREAM_INDEXES)),
                        inner)

    def text(self, i: int) -> str:
        container, key, _ = self.strings[i]
        return container[key]

    def encoded(self, texts: list) -> bytes:
        """The frame with its strings replaced by texts; the raw bytes when nothing changed."""
        if all(t == self.text(i) for i, t in enumerate(texts)):
            return self.raw
        for (container, key, _), text in zip(self.strings, texts):
            container[key] = text
        head = f"event: {self.event}\n" if self.event else ""
        return f"{head}data: {json.dumps(self.data, separators=(',', ':'), ensure_ascii=False)}\n\n".encode()


def _redacted(pieces: list, spans: list, offset: int) -> list:
    """pieces (consecutive texts starting at offset) with each span replaced by one REDACTED."""
    spans = _merged(spans)
    out = []
    for text in pieces:
        lo, hi = offset, offset + len(text)
        parts, pos = [], lo
        for start, end in spans:
            if end <= lo or start >= hi:
                continue
            parts.append(text[pos - lo:max(start, lo) - lo])
            if start >= lo:
                parts.append(REDACTED)
            pos = min(end, hi)
        parts.append(text[pos - lo:])
        out.append("".join(parts))
        offset = hi
    return out


def _merged(spans: list) -> list:
    out = []
    for start, end in sorted(spans):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def _json_value(text: str):
    """json.loads(text), less the two regular-expression look-ups for white space around the
    value that it makes (a third of its time for a stream frame)."""
    start = len(text) - len(text.lstrip(_JSON_SPACE))
    value, end = _RAW_DECODE(text, start)
    if end != len(text):
        rest = text[end:]
        end += len(rest) - len(rest.lstrip(_JSON_SPACE))
        if end != len(text):
            raise json.JSONDecodeError("Extra data", text, end)
    return value


_RAW_DECODE = json.JSONDecoder().raw_decode
_JSON_SPACE = " \t\n\r"


def _frame_end(buffer: bytes, start: int) -> tuple[int, int]:
    """Where the first complete SSE frame from start ends (position, separator length), or (-1, 0)."""
    if buffer.find(b"\r", start) < 0:
        at = buffer.find(b"\n\n", start)
        return (at, 2) if at >= 0 else (-1, 0)
    best = (-1, 0)
    for sep in (b"\n\n", b"\r\n\r\n", b"\r\r"):
        at = buffer.find(sep, start)
        if at >= 0 and (best[0] < 0 or at < best[0]):
            best = (at, len(sep))
    return best


def _canonical(arguments: str) -> str:
    """Tool-call arguments in one spelling (key order and spacing do not make a call different)."""
    try:
        return json.dumps(json.loads(arguments or "{}"), sort_keys=True, separators=(",", ":"))
    except ValueError:
        return arguments


def _names(value, where: str, known, fail) -> set:
    if not isinstance(value, list):
        fail(where, "must be a list of pattern names")
    for i, name in enumerate(value):
        if name not in known:
            fail(f"{where}[{i}]", f"unknown pattern {name!r}; known: {', '.join(known)}")
    return set(value)


def _actions(value, where: str, known, fail) -> dict:
    if not isinstance(value, dict):
        fail(where, "must be a mapping of pattern name to action")
    for name, action in value.items():
        if name not in known:
            fail(f"{where}.{name}", f"unknown pattern; known: {', '.join(known) or 'none'}")
        if action not in ACTIONS:
            fail(f"{where}.{name}", f"must be one of {', '.join(ACTIONS)}, got {action!r}")
    return dict(value)


def _custom_patterns(value, fail) -> dict:
    """name -> (compiled pattern, direction) for `custom_patterns`."""
    if not isinstance(value, list):
        fail("guardrails.custom_patterns", "must be a list of {name, regex, direction}")
    out = {}
    for i, spec in enumerate(value):
        where = f"guardrails.custom_patterns[{i}]"
        if not isinstance(spec, dict):
            fail(where, "must be a mapping with name, regex and direction")
        for key in spec:
            if key not in ("name", "regex", "direction"):
                fail(f"{where}.{key}", "unknown key; known keys: name, regex, direction")
        name, pattern, direction = spec.get("name"), spec.get("regex"), spec.get("direction", UPGOING)
        if not isinstance(name, str) or not name:
            fail(f"{where}.name", "is required (a string)")
        if name in BUILTIN or name in out or name == OWN_KEYS:
            fail(f"{where}.name", f"{name!r} is already a pattern name")
        if not isinstance(pattern, str) or not pattern:
            fail(f"{where}.regex", "is required (a string)")
        if direction not in DIRECTIONS:
            fail(f"{where}.direction", f"must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
        try:
            compiled = regex.compile(pattern)
        except regex.error as exc:
            fail(f"{where}.regex", f"not a valid regular expression: {exc}")
        if compiled.search(""):
            fail(f"{where}.regex", "matches the empty string, so it would match everywhere")
        out[name] = (compiled, direction)
    return out


def _section(value, where: str, defaults: dict, fail) -> dict:
    if not isinstance(value, dict):
        fail(where, "must be a mapping")
    for key in value:
        if key not in defaults:
            fail(f"{where}.{key}", f"unknown key; known keys: {', '.join(defaults)}")
    merged = {**defaults, **value}
    for key, default in defaults.items():
        if isinstance(default, bool):
            if not isinstance(merged[key], bool):
                fail(f"{where}.{key}", "must be true or false")
        elif isinstance(merged[key], bool) or not isinstance(merged[key], (int, float)) or merged[key] < 0:
            fail(f"{where}.{key}", f"must be a non-negative number, got {merged[key]!r}")
    return merged
