"""`bitrouter account`: generation, listing, selection, file formats and permissions (via the CLI)."""

import base64
import json
import re
import stat

from conftest import run_cli
from nacl.signing import SigningKey

from bitrouter import accounts
from bitrouter import home as home_mod

SEED_B64 = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"  # Appendix A: bytes 00..1f
PREFIX = "FAe4sisG95oZ42w7"
ISS = "solana:5eykt4UsFv8P8NJdTREpY1vzqKqZKvdp:FAe4sisG95oZ42w7buUn5qEE4TAnfTTFPiguZUHmhiF"


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def ok(home, *args) -> str:
    result = run_cli(home, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def fails(home, *args) -> str:
    """Run a command that must fail with exit 1 and exactly one `error:` line."""
    result = run_cli(home, *args)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0][len("error: "):]


def plant(home, name, seed_b64=SEED_B64) -> None:
    """An account folder written by hand, as an older BitRouter would have left it."""
    folder = home / ".keys" / name
    folder.mkdir(parents=True)
    (folder / "master.json").write_text(json.dumps({"algorithm": "web3", "seed": seed_b64}, indent=2))


def test_no_accounts_lists_a_hint(home):
    assert ok(home, "account") == f"No accounts found. Run `bitrouter --home-dir {home} account -g` to generate one.\n"
    assert ok(home, "account", "-l") == ok(home, "account", "--list")


def test_generate_layout_formats_and_permissions(home):
    out = ok(home, "account", "-g")
    match = re.fullmatch(
        r"Generated web3 master key\n"
        r"  solana:  ([1-9A-HJ-NP-Za-km-z]{32,44})\n"
        r"  prefix:  ([1-9A-HJ-NP-Za-km-z]{16})\n"
        r"  path:    (.+)\n"
        r"  active:  yes\n"
        r"Next: mint a token for your clients with `bitrouter --home-dir \S+ keygen --exp 30d` and send it "
        r"as Authorization: Bearer <token> \(or x-api-key\)\n", out)
    assert match, out
    pubkey, prefix, path = match.groups()
    assert pubkey.startswith(prefix)
    folder = home / ".keys" / prefix
    assert path == str(folder)
    assert (home / ".keys" / "active").read_text() == prefix  # no newline, as the original
    master = (folder / "master.json").read_text()
    body = json.loads(master)
    assert master == json.dumps(body, indent=2) and not master.endswith("\n")
    assert body["algorithm"] == "web3" and len(body["seed"]) == 43 and "=" not in body["seed"]
    key = accounts.load_signing_key(home_mod.at(home))
    assert accounts.b58encode(bytes(key.verify_key)) == pubkey
    assert mode(home / ".keys") == 0o700
    assert mode(folder) == 0o700 and mode(folder / "tokens") == 0o700
    assert mode(folder / "master.json") == 0o600 and mode(home / ".keys" / "active") == 0o600


def test_generate_long_flag_and_each_new_account_becomes_active(home):
    first = re.search(r"prefix:  (\S+)", ok(home, "account", "--generate-key")).group(1)
    second = re.search(r"prefix:  (\S+)", ok(home, "account", "-g")).group(1)
    assert first != second
    listing = ok(home, "account")
    assert f"{second} *" in listing and f"{first} *" not in listing


def test_reference_seed_lists_its_identity(home):
    plant(home, PREFIX)
    assert ok(home, "account", "-l") == f"  [0] {PREFIX}\n       sol: {ISS}\n"


def test_listing_is_sorted_in_byte_order_with_indices_and_active_marker(home):
    plant(home, "b-account")
    plant(home, "B-account")
    plant(home, "a-account")
    (home / ".keys" / "not-an-account").mkdir()
    (home / ".keys" / "active").write_text("b-account\n")
    lines = ok(home, "account").splitlines()
    assert lines[0::2] == ["  [0] B-account", "  [1] a-account", "  [2] b-account *"]
    assert all(line == f"       sol: {ISS}" for line in lines[1::2])


def test_unreadable_master_json_shows_question_marks(home):
    plant(home, "broken", seed_b64="too-short")
    assert ok(home, "account") == "  [0] broken\n       addresses: ???\n"


def test_set_by_index_prefix_and_exact_name(home):
    plant(home, "Alpha")
    plant(home, "AlphaBeta")
    plant(home, "Gamma")
    assert ok(home, "account", "--set", "2") == "Active account set to: Gamma\n"
    # "Alpha" is also a prefix of "AlphaBeta": the exact name wins.
    assert ok(home, "account", "--set", "Alpha") == "Active account set to: Alpha\n"
    assert ok(home, "account", "--set", "AlphaB") == "Active account set to: AlphaBeta\n"
    assert (home / ".keys" / "active").read_text() == "AlphaBeta"
    assert mode(home / ".keys" / "active") == 0o600
    assert "  [1] AlphaBeta *" in ok(home, "account")


def test_out_of_range_index_falls_back_to_a_prefix(home):
    plant(home, "7xQeWvG816bUx9EP")
    assert ok(home, "account", "--set", "7") == "Active account set to: 7xQeWvG816bUx9EP\n"
    assert ok(home, "account", "--set", "0") == "Active account set to: 7xQeWvG816bUx9EP\n"


def test_list_wins_over_set(home):
    plant(home, "Alpha")
    assert ok(home, "account", "-l", "--set", "Alpha") == f"  [0] Alpha\n       sol: {ISS}\n"
    assert not (home / ".keys" / "active").exists()


def test_set_errors(home):
    assert fails(home, "account", "--set", "0") == f"No accounts found. Run `bitrouter --home-dir {home} account -g` first."
    plant(home, "Alpha")
    plant(home, "Alpine")
    assert fails(home, "account", "--set", "Al") == 'Ambiguous prefix "Al" — matches 2 accounts. Use a longer prefix.'
    assert fails(home, "account", "--set", "Zed") == 'No account matching prefix "Zed"'
    assert fails(home, "account", "--set", "5") == 'Index 5 out of range (0..2), and no name starts with "5"'


def test_active_pointing_at_a_missing_account_is_an_error(home):
    plant(home, "Alpha")
    (home / ".keys" / "active").write_text("Gone")
    assert fails(home, "keygen").startswith("failed to read master.json for account Gone:")


def test_active_file_cannot_escape_the_keys_folder(home):
    plant(home, "Alpha")
    (home / ".keys" / "active").write_text("../Alpha")
    assert "is not a valid account prefix" in fails(home, "keygen")


def test_keygen_without_an_account(home):
    assert fails(home, "keygen") == f"No active account. Run `bitrouter --home-dir {home} account -g` to generate one."


def test_trusted_issuers_are_the_local_accounts(home):
    plant(home, PREFIX)
    other = re.search(r"solana:  (\S+)", ok(home, "account", "-g")).group(1)
    assert accounts.trusted_issuers(home_mod.at(home)) == {ISS, f"{accounts.SOLANA_CHAIN}:{other}"}


def test_generated_seed_signs_as_its_public_key(home):
    out = ok(home, "account", "-g")
    pubkey = re.search(r"solana:  (\S+)", out).group(1)
    prefix = re.search(r"prefix:  (\S+)", out).group(1)
    seed = json.loads((home / ".keys" / prefix / "master.json").read_text())["seed"]
    key = SigningKey(base64.urlsafe_b64decode(seed + "="))
    assert accounts.b58encode(bytes(key.verify_key)) == pubkey
