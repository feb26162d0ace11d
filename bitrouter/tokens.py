"""BitRouter tokens: SOL_EDDSA JWTs minted by a local account and checked by the server.

The format is the Rust BitRouter's (bitrouter/bitrouter), byte for byte, so a token works
with both: header `{"alg":"SOL_EDDSA","typ":"JWT"}`, compact claims in a fixed order,
Ed25519 (pynacl) over `b64url(header).b64url(payload)`.
python-jose does the JWS work through a key class registered for SOL_EDDSA.
"""

import functools
import hashlib
import json
import re
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from jose import jwk, jws, jwt
from jose.backends.base import Key
from jose.constants import ALGORITHMS
from jose.exceptions import JOSEError, JWTClaimsError
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from bitrouter import Error, accounts, hints
from bitrouter.home import write_private

ALG = "SOL_EDDSA"
SCOPES = ("api", "admin")
BUDGET_SCOPES = ("session", "account")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "y": 31_536_000}
MAX_TIMESTAMP = 2**63 - 1  # what the database's BIGINT columns hold
NAME_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")

ADMIN_NEEDS_EXP = "Admin-scope tokens require --exp (e.g., --exp 5m). This limits replay window."


class AuthError(Error):
    """A rejected credential: `status` is the HTTP status, the message says why."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Claims:
    """The checked claims of a token, plus the issuer's base58 key and the token's hash."""

    iss: str
    chain: str
    scope: str
    address: str
    token_hash: str
    iat: int | None = None
    exp: int | None = None
    models: tuple | None = None
    budget: int | None = None
    budget_scope: str | None = None
    budget_range: dict | None = None


def mint(signing_key, scope="api", exp=None, models=None, budget=None, budget_scope=None,
         budget_range=None, iat=None) -> str:
    """Sign a token with a nacl SigningKey; `budget_range` is {"type": "rounds"|"duration", ...}."""
    _register()
    pubkey = accounts.b58encode(bytes(signing_key.verify_key))
    claims = {"iss": f"{accounts.SOLANA_CHAIN}:{pubkey}", "chain": accounts.SOLANA_CHAIN,
              "iat": int(time.time()) if iat is None else iat}
    optional = {"exp": exp, "scope": scope, "models": None if models is None else list(models),
                "budget": budget, "budget_scope": budget_scope, "budget_range": budget_range}
    claims.update((k, v) for k, v in optional.items() if v is not None)
    try:
        _parse_claims(claims, "")  # never mint a token the verifier would call malformed
    except ValueError as exc:
        raise Error(f"cannot mint this token: {exc}") from None
    # jose.jwt.encode would serialise the claims with ensure_ascii, escaping non-ASCII model
    # names that the Rust BitRouter writes as UTF-8; so the payload bytes are made here and
    # jose.jws builds the header (sorted keys: alg, typ, as the Rust BitRouter has them), encodes and signs.
    payload = json.dumps(claims, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return jws.sign(payload, SolEdDSAKey(signing_key, ALG), algorithm=ALG)


def verify(token, trusted, now=None, leeway=30, revoked=()) -> Claims:
    """Check a token completely or raise AuthError(401) naming the first failure.

    `trusted` holds CAIP-10 ids and/or base58 keys; `revoked` holds token hashes.
    """
    _register()
    if not token:
        raise AuthError(401, "missing token")
    token = str(token)
    try:
        _check_encoding(token)
        alg = jws.get_unverified_header(token).get("alg")
    except (ValueError, JOSEError) as exc:
        raise AuthError(401, f"malformed token: {exc}") from None
    if alg != ALG:
        raise AuthError(401, f"unsupported token algorithm {alg!r}: only {ALG} is accepted")
    digest = token_hash(token)
    try:
        claims = _parse_claims(jwt.get_unverified_claims(token), digest)
    except (ValueError, JOSEError) as exc:
        raise AuthError(401, f"malformed token: {exc}") from None
    key = SolEdDSAKey(VerifyKey(accounts.b58decode(claims.address)), ALG)
    try:
        # Expiry is checked below instead: jose reads the wall clock and cannot take `now`.
        jwt.decode(token, key, algorithms=[ALG], options={"verify_exp": False, "leeway": leeway})
    except JWTClaimsError as exc:
        raise AuthError(401, f"malformed token: {exc}") from None
    except JOSEError:
        raise AuthError(401, "bad signature") from None
    now = time.time() if now is None else now
    if claims.exp is not None and now >= claims.exp + leeway:
        raise AuthError(401, f"token expired at {_utc(claims.exp)}")
    if claims.iat is not None and claims.iat > now + leeway:
        raise AuthError(401, f"token issued in the future ({_utc(claims.iat)}); check the clocks")
    if claims.scope == "admin" and claims.exp is None:
        raise AuthError(401, "admin tokens must have an expiry (exp)")
    if claims.iss not in trusted and claims.address not in trusted:
        raise AuthError(401, f"untrusted issuer {claims.iss}")
    if digest in revoked:
        raise AuthError(401, "token revoked")
    return claims


def token_hash(token: str) -> str:
    """The sha256 hex digest that identifies a token in the database (for revocation)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def parse_exp(value, now=None) -> int | None:
    """An `--exp` value (30s/5m/1h/30d/1y or `never`) as an absolute Unix time, None for never."""
    if value is None:
        return None
    text = str(value).strip()
    if text == "never":
        return None
    if isinstance(value, (int, float)) or text.isdigit():
        raise Error(f'invalid expiration "{text}": a bare number is ambiguous; '
                    f'give a unit (e.g. "{text}s") or "never"')
    seconds = parse_duration(text, "expiration")
    if seconds <= 0:
        raise Error(f'expiration "{text}" is not in the future')
    exp = int(time.time() if now is None else now) + seconds
    if exp > MAX_TIMESTAMP:
        raise Error(f'expiration "{text}" is too far in the future')
    return exp


def parse_duration(text, what="duration") -> int:
    """`<N><unit>` with unit s/m/h/d/y, as seconds."""
    text = str(text).strip()
    match = re.fullmatch(r"(\d+)(\D+)", text)
    if not match:
        raise Error(f'invalid {what} format: "{text}" (try "5m", "1h", "30d")')
    number, unit = match.groups()
    if unit not in UNITS:
        raise Error(f'unknown duration unit "{unit}" in "{text}" (use s/m/h/d/y)')
    return int(number) * UNITS[unit]


def parse_budget_range(value) -> dict | None:
    """`rounds:N` or `duration:N[s]` as the budget_range claim."""
    if value is None:
        return None
    text = str(value).strip()
    kind, sep, amount = text.partition(":")
    if not sep or kind not in ("rounds", "duration"):
        raise Error(f'invalid budget range: "{text}" (use "rounds:N" or "duration:Xs")')
    if kind == "rounds":
        if not amount.isdigit() or int(amount) < 1:
            raise Error(f'invalid round count: "{amount}"')
        return {"type": "rounds", "count": int(amount)}
    seconds = amount[:-1] if amount.endswith("s") else amount
    if not seconds.isdigit() or int(seconds) < 1:
        raise Error(f'invalid duration seconds: "{amount}"')
    return {"type": "duration", "seconds": int(seconds)}


def model_allowed(patterns, *names) -> bool:
    """True when any name matches any glob (`*` is the only wildcard); no patterns allow all."""
    if not patterns:
        return True
    return any(_glob(p).fullmatch(n) for p in patterns for n in names if n)


def keygen_command(home, exp=None, models=None, name=None, scope="api", budget=None,
                   budget_scope=None, budget_range=None, chain="solana") -> None:
    """`bitrouter keygen`: mint a token with the active account, print it, optionally save it."""
    scope = str(scope)
    if scope not in SCOPES:
        raise Error(f'invalid scope "{scope}" — use "admin" or "api"')
    if budget_scope is not None and str(budget_scope) not in BUDGET_SCOPES:
        raise Error(f'invalid budget scope "{budget_scope}" — use "session" or "account"')
    if name is not None:
        name = _check_name(name)
    account = accounts.active(home)
    if account is None:
        raise Error(accounts.no_active())
    if str(chain) != "solana":
        raise Error(f'unsupported chain "{chain}" — use "solana" (EVM signing is not available '
                    'in this build)')
    exp = parse_exp(exp)
    if scope == "admin" and exp is None:
        raise Error(ADMIN_NEEDS_EXP)
    budget_range = parse_budget_range(budget_range)
    token = mint(accounts.load_signing_key(home, account.prefix), scope=scope, exp=exp,
                 models=_model_list(models), budget=_budget(budget),
                 budget_scope=None if budget_scope is None else str(budget_scope),
                 budget_range=budget_range)
    folder = account.path / "tokens"
    name = name if name is not None else _next_name(_saved_names(folder))
    path = _save(home, account.prefix, name, token)
    print(token)
    print(f"Saved as {name!r} in {path}; revoke it with `{hints.command('keys', '--rm', name)}`",
          file=sys.stderr)
    if exp is None:
        print("warning: this token never expires; mint tokens with --exp (e.g. --exp 30d) "
              "unless it must outlive every rotation", file=sys.stderr)


def keys_command(home, listing=False, show=None, rm=None) -> None:
    """`bitrouter keys`: show, then rm, then list (the default) the active account's tokens."""
    account = accounts.active(home)
    if account is None:
        raise Error(accounts.no_active())
    folder = account.path / "tokens"
    names = _saved_names(folder)
    if show is None and rm is None:
        print(_listing(account.prefix, folder, names))
        return
    ident = show if show is not None else rm
    if _looks_like_token(ident):  # the token itself, pasted: found by content, or revoked by hash
        chosen = next((n for n in names if _read_token(folder / f"{n}.jwt") == str(ident).strip()), None)
        if chosen is None:
            if show is not None:
                raise Error("that token is not among the saved tokens of the active account")
            _revoke(home, str(ident).strip(), None, account.prefix)
            print("Revoked the token (it was not among the saved tokens)")
            return
    else:
        if not names:
            raise Error("No saved tokens.")
        chosen = accounts.pick(names, ident, missing='No token matching "{id}"',
                               ambiguous='Ambiguous identifier "{id}" — matches {n} tokens. Be more specific.')
    path = folder / f"{chosen}.jwt"
    token = _read_token(path)
    if show is not None:
        try:
            claims = jwt.get_unverified_claims(token)
        except JOSEError as exc:
            raise Error(f"failed to decode token: malformed token: {exc}") from None
        print(json.dumps(claims, indent=2, ensure_ascii=False))
        print()
        print("Raw JWT:")
        print(token)
        return
    # Revoke before deleting: if the database is unreachable the file stays, so the token
    # can still be found and revoked later (fail closed).
    _revoke(home, token, chosen, account.prefix)
    path.unlink()
    print(f"Removed token: {chosen} (revoked)")


def usage_command(home, since="30d", by="token") -> None:
    """`bitrouter usage`: spend grouped by token (or model, or account) and model over a period."""
    from bitrouter import store
    by = str(by)
    if by not in store.USAGE_GROUPS:
        raise Error(f'invalid --by "{by}" — use {", ".join(store.USAGE_GROUPS)}')
    start = None
    if str(since) != "all":
        start = time.time() - parse_duration(since, "period")
    with _open_store(home) as db:
        rows = db.usage(since=start, by=by)
    period = "all time" if start is None else f"since {_utc(start)} ({since})"
    if not rows:
        print(f"No recorded spend {period}.")
        return
    headers = {"token": ("TOKEN", "MODEL"), "model": ("MODEL",), "account": ("ACCOUNT", "MODEL")}[by]
    table = [headers + ("REQUESTS", "INPUT", "OUTPUT", "COST (USD)")]
    for row in rows:
        table.append(tuple(row["keys"]) + (str(row["requests"]), str(row["input_tokens"]),
                                           str(row["output_tokens"]), _usd(row["cost"])))
    total = sum(r["cost"] for r in rows)
    print(f"Spend {period}, by {by}:")
    widths = [max(len(r[i]) for r in table) for i in range(len(headers))]
    for row in table:
        left = "  ".join(cell.ljust(w) for cell, w in zip(row, widths))
        right = "".join(cell.rjust(12) for cell in row[len(headers):])
        print(f"  {left}{right}")
    print(f"  total: {_usd(total)} USD over {sum(r['requests'] for r in rows)} requests")


def revocation_stamp(home):
    """The file whose change tells a running server to reload revocations at once."""
    return home.keys_dir / "revoked"


class SolEdDSAKey(Key):
    """The python-jose key for SOL_EDDSA: plain Ed25519 over the signing input (pynacl)."""

    def __init__(self, key, algorithm):
        if algorithm != ALG or not isinstance(key, (SigningKey, VerifyKey)):
            raise JOSEError(f"{ALG} keys are nacl SigningKey or VerifyKey objects")
        self._signing = key if isinstance(key, SigningKey) else None
        self._verify = key.verify_key if isinstance(key, SigningKey) else key

    def sign(self, msg):
        return self._signing.sign(msg).signature

    def verify(self, msg, sig):
        try:
            self._verify.verify(msg, sig)
        except (BadSignatureError, ValueError, TypeError):
            return False
        return True


# ---------------------------------------------------------------- helpers


def _register() -> None:
    """Teach python-jose the SOL_EDDSA algorithm (on first use, not at import)."""
    if ALGORITHMS.KEYS.get(ALG) is not SolEdDSAKey:
        jwk.register_key(ALG, SolEdDSAKey)


def _check_encoding(token: str) -> None:
    """Three canonical unpadded base64url segments, nothing else.

    jose's decoder is lenient (it skips stray characters and ignores unused trailing bits),
    so one token could be spelt several ways; each spelling would hash differently and
    slip past revocation. Only the one canonical spelling is accepted.
    """
    import base64
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError(f"expected 3 dot-separated segments, got {len(parts)}")
    for label, part in zip(("header", "payload", "signature"), parts):
        if not re.fullmatch(r"[A-Za-z0-9_-]+", part) or len(part) % 4 == 1:
            raise ValueError(f"the {label} is not unpadded base64url")
        raw = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
        if base64.urlsafe_b64encode(raw).decode().rstrip("=") != part:
            raise ValueError(f"the {label} is not canonical base64url")


def _parse_claims(raw, digest: str) -> Claims:
    """Validate claim types and the issuer; raise ValueError saying what is wrong."""
    if not isinstance(raw, dict):
        raise ValueError("the claims must be a JSON object")
    iss, chain = raw.get("iss"), raw.get("chain")
    if not isinstance(iss, str) or iss.count(":") != 2:
        raise ValueError("iss must be a CAIP-10 id (namespace:reference:address)")
    namespace, reference, address = iss.split(":")
    if namespace != "solana":
        raise ValueError(f"iss namespace {namespace!r} does not match {ALG}")
    if chain != f"{namespace}:{reference}":
        raise ValueError(f"chain {chain!r} does not match the issuer's {namespace}:{reference}")
    if not accounts.is_public_key(address):
        raise ValueError("the iss address is not a base58 Ed25519 public key")
    if raw.get("scope") not in SCOPES:
        raise ValueError('scope must be "api" or "admin"')
    for field in ("iat", "exp", "budget"):
        value = raw.get(field)
        if value is not None and (type(value) is not int or not 0 <= value <= MAX_TIMESTAMP):
            raise ValueError(f"{field} must be a non-negative integer")
    models = raw.get("models")
    if models is not None and (not isinstance(models, list)
                               or not all(isinstance(m, str) for m in models)):
        raise ValueError("models must be a list of strings")
    if raw.get("budget_scope") not in (None,) + BUDGET_SCOPES:
        raise ValueError('budget_scope must be "session" or "account"')
    budget_range = raw.get("budget_range")
    if budget_range is not None and not _valid_range(budget_range):
        raise ValueError('budget_range must be {"type":"rounds","count":N} or '
                         '{"type":"duration","seconds":N}')
    return Claims(iss=iss, chain=chain, scope=raw["scope"], address=address, token_hash=digest,
                  iat=raw.get("iat"), exp=raw.get("exp"),
                  models=None if models is None else tuple(models), budget=raw.get("budget"),
                  budget_scope=raw.get("budget_scope"), budget_range=budget_range)


def _valid_range(value) -> bool:
    """A budget_range object of a known type with a non-negative integer amount."""
    if not isinstance(value, dict):
        return False
    field = {"rounds": "count", "duration": "seconds"}.get(value.get("type"))
    amount = value.get(field) if field else None
    return type(amount) is int and 0 <= amount <= MAX_TIMESTAMP


@functools.lru_cache(maxsize=1024)  # patterns repeat on every request of a token
def _glob(pattern: str):
    """A compiled model glob: `*` matches any run of characters, including '/' and ':'."""
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.S)


def _check_name(name) -> str:
    """A token name that is safe as a file name: no separators, no leading dot."""
    name = str(name)
    if not NAME_RE.fullmatch(name):
        raise Error(f'invalid token name "{name}": use letters, digits, ".", "_" and "-" '
                    '(at most 100, not starting with ".")')
    return name


def _model_list(models) -> list | None:
    """`--models a,b` (fire may hand over a string, a tuple or a list) as a list of globs."""
    if models is None:
        return None
    items = models if isinstance(models, (list, tuple)) else str(models).split(",")
    result = [str(m).strip() for m in items if str(m).strip()]
    if not result:
        raise Error("--models needs at least one model name or pattern")
    return result


def _budget(value) -> int | None:
    """`--budget` in micro-USD: a non-negative integer."""
    if value is None:
        return None
    if isinstance(value, bool) or not str(value).isdigit() or int(value) > MAX_TIMESTAMP:
        raise Error(f'invalid budget "{value}": give whole micro-USD (1 USD = 1000000)')
    return int(value)


def _save(home, prefix: str, name: str, token: str):
    """Record the token in the database, then write `tokens/<name>.jwt` (0600, no newline)."""
    path = home.keys_dir / prefix / "tokens" / f"{name}.jwt"
    if path.exists():
        raise Error(f'a token named "{name}" already exists; remove it first with '
                    f"`{hints.command('keys', '--rm', name)}`")
    claims = jwt.get_unverified_claims(token)
    with _open_store(home) as db:
        db.record_token(token_hash(token), name=name, account=prefix, claims=claims)
    write_private(path, token)
    return path


def _revoke(home, token: str, name, prefix: str) -> None:
    """Record the revocation and touch the stamp, so a running server refuses the token at once."""
    with _open_store(home) as db:
        db.revoke(token_hash(token), name=name, account=prefix)
    write_private(revocation_stamp(home), str(time.time_ns()))


def _looks_like_token(ident) -> bool:
    return isinstance(ident, str) and ident.strip().startswith("eyJ") and ident.count(".") == 2


def _next_name(names: list) -> str:
    """`token-N`, one past the highest N in use."""
    numbers = [int(n[6:]) for n in names if re.fullmatch(r"token-\d+", n)]
    return f"token-{max(numbers, default=0) + 1}"


def _open_store(home):
    """The store of the database this home is configured for (--db, env, config, default)."""
    from bitrouter import config, store
    return store.Store(config.load(home).database_url)


def _saved_names(folder) -> list[str]:
    """Names of the `*.jwt` files in a tokens folder, sorted in byte order."""
    if not folder.is_dir():
        return []
    return sorted(p.name[:-4] for p in folder.iterdir() if p.name.endswith(".jwt") and p.is_file())


def _read_token(path) -> str:
    """A saved token's text."""
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise Error(f"cannot read {path}: {exc.strerror}") from None


def _listing(prefix: str, folder, names: list[str]) -> str:
    """The `keys --list` text: index and name, then scope, chain, expiry and models."""
    if not names:
        return (f"No saved tokens for account {prefix}.\n"
                f"Run `{hints.command('keygen', '--exp', '30d')}` to create one.")
    lines = []
    for index, name in enumerate(names):
        lines.append(f"  [{index}] {name}")
        try:
            claims = jwt.get_unverified_claims((folder / f"{name}.jwt").read_text(encoding="utf-8"))
        except OSError:
            lines.append("       error reading file")
            continue
        except JOSEError:
            lines.append("       invalid token")
            continue
        exp = _expiry(claims.get("exp"))
        models = claims.get("models")
        allowed = f"models={','.join(map(str, models))}" if models else "all-models"
        lines.append(f"       scope={claims.get('scope')}  chain={claims.get('chain')}  {exp}  {allowed}")
    return "\n".join(lines)


def _expiry(exp) -> str:
    """`expires 2026-12-31 10:00 UTC`, `expired ...` or `never expires`."""
    if exp is None:
        return "never expires"
    try:
        when = datetime.fromtimestamp(exp, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    except (OverflowError, OSError, ValueError, TypeError):
        return f"exp={exp}"
    return ("expired " if exp <= time.time() else "expires ") + when


def _utc(ts) -> str:
    """A Unix time as `YYYY-MM-DD HH:MM:SS UTC`."""
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _usd(micro: int) -> str:
    """Micro-USD as a dollar amount with six decimals."""
    return f"{micro / 1_000_000:.6f}"
