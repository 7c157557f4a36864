"""Shell completion: `tachyon-ctl completion bash|zsh`, run by real bash and zsh against a real daemon."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, base_document, require_tool, run_ctl

BIN = str(Path(sys.executable).parent)  # where the venv's tachyon-ctl is


def test_completion_data_is_what_the_generator_writes():
    """tachyon_ctl/completion_data.py is current: `python -m tachyond.rpc.completion_gen …` (like docs/rpc.md)."""
    from tachyond.rpc.completion_gen import generate

    assert (ROOT / "tachyon_ctl" / "completion_data.py").read_text() == generate(), \
        "run: .venv/bin/python -m tachyond.rpc.completion_gen tachyon_ctl/completion_data.py"


def bash_complete(line: str, socket_path: str | None = None) -> list[str]:
    """What bash offers for the last word of ``line`` (a trailing space: a new, empty word)."""
    words = line.split(" ")
    script = run_ctl("completion", "bash").stdout
    program = (script + "\nCOMP_WORDS=(" + " ".join(f"'{w}'" for w in words) + f")\nCOMP_CWORD={len(words) - 1}\n"
               "_tachyon_ctl\nprintf '%s\\n' \"${COMPREPLY[@]}\"\n")
    env = {**os.environ, "PATH": BIN + os.pathsep + os.environ["PATH"]}
    env.pop("TACHYON_SOCKET", None)
    if socket_path:
        env["TACHYON_SOCKET"] = socket_path
    r = subprocess.run(["bash", "--norc", "-c", program], capture_output=True, text=True, env=env, timeout=30)
    assert r.returncode == 0, r.stderr
    return [x for x in r.stdout.splitlines() if x]


def zsh_complete(line: str, socket_path: str | None = None) -> list[str]:
    """The same through zsh: compadd and _files (the completion system's builtins) print what they get."""
    zsh = require_tool("zsh")
    words = line.split(" ")
    script = run_ctl("completion", "zsh").stdout
    program = ("compdef() { : }\ncompadd() { shift; print -l -- \"$@\" }\n_files() { print -- FILES }\n" + script
               + "\nwords=(" + " ".join(f"'{w}'" for w in words) + f")\nCURRENT={len(words)}\n_tachyon_ctl\n")
    env = {**os.environ, "PATH": BIN + os.pathsep + os.environ["PATH"]}
    env.pop("TACHYON_SOCKET", None)
    if socket_path:
        env["TACHYON_SOCKET"] = socket_path
    r = subprocess.run([zsh, "-f", "-c", program], capture_output=True, text=True, env=env, timeout=30)
    assert r.returncode == 0, r.stderr
    return [x for x in r.stdout.splitlines() if x]


@pytest.mark.parametrize("complete", [bash_complete, zsh_complete], ids=["bash", "zsh"])
def test_commands_flags_choices_and_methods_complete_without_a_daemon(complete):
    assert complete("tachyon-ctl d") == ["dex"]
    assert complete("tachyon-ctl re") == ["reload"]
    assert complete("tachyon-ctl dex tr") == ["trades"]
    assert complete("tachyon-ctl dex trades --") == ["--account", "--all", "--before", "--json", "--limit",
                                                     "--market", "--socket"]
    assert complete("tachyon-ctl dex orders --status c") == ["canceled", "closed"]
    assert complete("tachyon-ctl --json ledger history --a") == ["--account", "--all"]
    assert complete("tachyon-ctl call daemon.r") == ["daemon.reload"]
    assert complete("tachyon-ctl help dex.w") == ["dex.watch"]
    assert complete("tachyon-ctl completion ") == ["bash", "zsh"]
    # No daemon: the dynamic names are simply not offered.
    assert complete("tachyon-ctl dex trades --market ") == []


def test_wallet_backup_completes_file_names(tmp_path):
    (tmp_path / "backup-one.db").write_text("")
    assert bash_complete(f"tachyon-ctl wallet backup {tmp_path}/back") == [f"{tmp_path}/backup-one.db"]
    assert zsh_complete(f"tachyon-ctl wallet backup {tmp_path}/back") == ["FILES"]


@pytest.mark.slow
@pytest.mark.parametrize("complete", [bash_complete, zsh_complete], ids=["bash", "zsh"])
def test_markets_and_accounts_come_from_the_running_daemon(complete, daemon_factory, sockdir):
    doc = base_document(sockdir, tokens=[{"symbol": "USDC", "decimals": 6}, {"symbol": "ZEC", "decimals": 8},
                                         {"symbol": "ZAP", "decimals": 8}],
                        markets=[{"symbol": s, "engine": "memory", "tick": "0.01", "lot": "0.0001",
                                  "min_notional": "1"} for s in ("ZEC/USDC", "ZAP/USDC")])
    d = daemon_factory(doc).start()
    d.call("wallet.create", {"password": "completion test pw"})
    d.call("accounts.create", {"name": "alice"})
    d.call("accounts.create", {"name": "albert"})
    assert complete("tachyon-ctl dex trades --market Z", d.socket) == ["ZAP/USDC", "ZEC/USDC"]
    assert complete("tachyon-ctl balance --account al", d.socket) == ["albert", "alice"]
    assert complete("tachyon-ctl ledger transfer --to ", d.socket) == ["albert", "alice", "default"]
    assert complete("tachyon-ctl ledger deposit --token Z", d.socket) == ["ZAP", "ZEC"]
    # --socket given on the line wins over $TACHYON_SOCKET.
    assert complete(f"tachyon-ctl --socket {d.socket} dex orders --market ZA") == ["ZAP/USDC"]


def test_the_install_command_of_the_docs_is_the_one_the_script_names():
    text = (ROOT / "docs" / "operations.md").read_text()
    assert "tachyon-ctl completion bash | sudo tee /etc/bash_completion.d/tachyon-ctl >/dev/null" in text
    assert (
        "tachyon-ctl completion bash | sudo tee /etc/bash_completion.d/tachyon-ctl >/dev/null"
        in run_ctl("completion", "bash").stdout
    )
    assert run_ctl("completion", "fish").returncode == 2
