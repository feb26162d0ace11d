"""Local signing accounts: Ed25519 seeds under `<home>/.keys`, one folder per account.

Layout and formats are those of the Rust BitRouter (bitrouter/bitrouter, which this project
re-creates), so its existing homes keep working:
`.keys/<prefix>/master.json` holds the key's 32-byte seed, `.keys/active` names the active prefix, and
the prefix is the first 16 characters of the base58 public key.
"""

import base64
import json
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

from bitrouter import Error, hints
from bitrouter.home import write_private

SOLANA_CHAIN = "solana:5eykt4UsFv8P8NJdTREpY1vzqKqZKvdp"  # Solana mainnet, CAIP-2
PREFIX_LEN = 16
B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"



def no_active() -> str:
    """The error for a command that needs an account when none is active."""
    return f"No active account. Run `{hints.command('account', '-g')}` to generate one."


@dataclass(frozen=True)
class Account:
    """One local account folder; `pubkey` is None when its master.json cannot be read."""

    prefix: str
    path: Path
    pubkey: str | None
    active: bool

    @property
    def caip10(self) -> str | None:
        """The account's Solana CAIP-10 id (the token issuer), None if its key is unreadable."""
        return f"{SOLANA_CHAIN}:{self.pubkey}" if self.pubkey else None


def generate(home) -> Account:
    """Create a new account from a random seed and make it the active one."""
    from nacl.signing import SigningKey
    seed = os.urandom(32)
    pubkey = b58encode(bytes(SigningKey(seed).verify_key))
    prefix = pubkey[:PREFIX_LEN]
    keys_dir = _make_keys_dir(home)
    folder = keys_dir / prefix
    try:
        folder.mkdir(mode=0o700)
    except FileExistsError:
        # Never overwrite a seed: that would destroy the only copy of a key.
        raise Error(f"an account folder {folder} already exists; not overwriting it") from None
    os.chmod(folder, 0o700)
    (folder / "tokens").mkdir(mode=0o700)
    os.chmod(folder / "tokens", 0o700)
    body = {"algorithm": "web3", "seed": base64.urlsafe_b64encode(seed).decode().rstrip("=")}
    write_private(folder / "master.json", json.dumps(body, indent=2))
    write_private(keys_dir / "active", prefix)
    return Account(prefix=prefix, path=folder, pubkey=pubkey, active=True)


def list_accounts(home) -> list[Account]:
    """Every folder of `.keys` holding a master.json, sorted by name in byte order."""
    keys_dir = home.keys_dir
    if not keys_dir.is_dir():
        return []
    current = _read_active(home)
    found = []
    for name in sorted(os.listdir(keys_dir)):
        folder = keys_dir / name
        if not (folder / "master.json").is_file():
            continue
        try:
            pubkey = b58encode(bytes(_load_seed_key(folder).verify_key))
        except Error:
            pubkey = None
        found.append(Account(prefix=name, path=folder, pubkey=pubkey, active=name == current))
    return found


def active(home) -> Account | None:
    """The active account, or None when none is set."""
    prefix = _read_active(home)
    if not prefix:
        return None
    folder = home.keys_dir / prefix
    key = _load_key_for(folder, prefix)
    return Account(prefix=prefix, path=folder, pubkey=b58encode(bytes(key.verify_key)), active=True)


def set_active(home, ident) -> Account:
    """Make an account active, chosen by exact name, index or unique prefix."""
    accounts = list_accounts(home)
    if not accounts:
        raise Error(f"No accounts found. Run `{hints.command('account', '-g')}` first.")
    names = [a.prefix for a in accounts]
    chosen = pick(names, ident, missing='No account matching prefix "{id}"',
                  ambiguous='Ambiguous prefix "{id}" — matches {n} accounts. Use a longer prefix.')
    write_private(home.keys_dir / "active", chosen)
    return replace(accounts[names.index(chosen)], active=True)


def load_signing_key(home, prefix=None):
    """The nacl SigningKey of the active account (or of `prefix`)."""
    prefix = prefix or _read_active(home)
    if not prefix:
        raise Error(no_active())
    return _load_key_for(home.keys_dir / prefix, prefix)


def trusted_issuers(home) -> set[str]:
    """The CAIP-10 identities of every readable local account."""
    return {a.caip10 for a in list_accounts(home) if a.caip10}


def command(home, generate_key=False, listing=False, select=None, on_first_account=None) -> None:
    """`bitrouter account`: generate, then list, then set; listing is the default.

    `on_first_account(home)` runs once the home's first trusted account exists: the CLI
    passes daemon.warn_open_server, as a server running open now wants tokens.
    """
    if generate_key:
        was_trusted = bool(trusted_issuers(home))
        account = generate(home)
        print("Generated web3 master key")
        print(f"  solana:  {account.pubkey}")
        print(f"  prefix:  {account.prefix}")
        print(f"  path:    {account.path}")
        print("  active:  yes")
        if not was_trusted and on_first_account is not None:
            on_first_account(home)
        print(f"Next: mint a token for your clients with `{hints.command('keygen', '--exp', '30d')}` "
              "and send it as Authorization: Bearer <token> (or x-api-key)")
    elif listing or select is None:
        print(_listing(list_accounts(home)))
    else:
        account = set_active(home, select)
        print(f"Active account set to: {account.prefix}")


def pick(names: list[str], ident, missing: str, ambiguous: str) -> str:
    """Resolve a user's choice: an exact name, then an index, then a unique name prefix.

    An all-digit choice that is out of range is tried as a prefix too, since base58
    prefixes and token names may start with digits. `missing` and `ambiguous` are messages
    formatted with `id` (and `n` for the number of matches).
    """
    ident = str(ident)
    if ident in names:
        return ident
    if ident.isdigit() and int(ident) < len(names):
        return names[int(ident)]
    matches = [n for n in names if n.startswith(ident)] if ident else []
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise Error(ambiguous.format(id=ident, n=len(matches)))
    if ident.isdigit():
        raise Error(f'Index {ident} out of range (0..{len(names)}), and no name starts with "{ident}"')
    raise Error(missing.format(id=ident))


def b58encode(data: bytes) -> str:
    """Bitcoin-alphabet base58, leading zero bytes kept as '1'."""
    number = int.from_bytes(data, "big")
    out = ""
    while number:
        number, rem = divmod(number, 58)
        out = B58_ALPHABET[rem] + out
    return "1" * (len(data) - len(data.lstrip(b"\0"))) + out


def is_public_key(text: str) -> bool:
    """True for the canonical base58 spelling of a 32-byte Ed25519 public key."""
    try:
        key = b58decode(text)
    except ValueError:
        return False
    return len(key) == 32 and b58encode(key) == text


def b58decode(text: str) -> bytes:
    """Inverse of b58encode; raises ValueError on characters outside the alphabet."""
    number = 0
    for char in text:
        index = B58_ALPHABET.find(char)
        if index < 0:
            raise ValueError(f"invalid base58 character {char!r}")
        number = number * 58 + index
    body = number.to_bytes((number.bit_length() + 7) // 8, "big")
    return b"\0" * (len(text) - len(text.lstrip("1"))) + body


# ---------------------------------------------------------------- helpers


def _make_keys_dir(home) -> Path:
    """`<home>/.keys`, created 0700 if missing."""
    keys_dir = home.keys_dir
    if not keys_dir.is_dir():
        keys_dir.mkdir(parents=True, mode=0o700)
        os.chmod(keys_dir, 0o700)
    return keys_dir


def _read_active(home) -> str:
    """The trimmed contents of `.keys/active`, or '' when unset."""
    try:
        return (home.keys_dir / "active").read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return ""
    except OSError as exc:
        raise Error(f"cannot read {home.keys_dir / 'active'}: {exc.strerror}") from None


def _load_key_for(folder: Path, prefix: str):
    """Load an account's key; the prefix is checked first because it becomes a path."""
    if not re.fullmatch(r"[1-9A-HJ-NP-Za-km-z]+", prefix):
        raise Error(f"{prefix!r} is not a valid account prefix (check {folder.parent / 'active'})")
    try:
        return _load_seed_key(folder)
    except Error as exc:
        raise Error(f"failed to read master.json for account {prefix}: {exc}") from None


def _load_seed_key(folder: Path):
    """Parse `master.json` (algorithm web3, 32-byte base64url seed) into a SigningKey."""
    from nacl.signing import SigningKey
    try:
        body = json.loads((folder / "master.json").read_text(encoding="utf-8"))
    except OSError as exc:
        raise Error(exc.strerror or str(exc)) from None
    except ValueError:
        raise Error("not valid JSON") from None
    if not isinstance(body, dict) or body.get("algorithm") != "web3":
        raise Error('unsupported key algorithm (expected "web3")')
    seed_text = body.get("seed")
    try:
        if not isinstance(seed_text, str):
            raise ValueError
        seed = base64.urlsafe_b64decode(seed_text + "=" * (-len(seed_text) % 4))
    except ValueError:
        raise Error("the seed is not base64url") from None
    if len(seed) != 32:
        raise Error(f"the seed must be 32 bytes, got {len(seed)}")
    return SigningKey(seed)


def _listing(accounts: list[Account]) -> str:
    """The `account --list` text: index, prefix, active marker and the Solana identity."""
    if not accounts:
        return f"No accounts found. Run `{hints.command('account', '-g')}` to generate one."
    lines = []
    for index, account in enumerate(accounts):
        lines.append(f"  [{index}] {account.prefix}{' *' if account.active else ''}")
        if account.caip10:
            lines.append(f"       sol: {account.caip10}")
        else:
            lines.append("       addresses: ???")
    return "\n".join(lines)
