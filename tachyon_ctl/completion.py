"""``tachyon-ctl completion bash|zsh`` prints a completion script; the script asks ``tachyon-ctl __complete``
(hidden) for candidates: commands, flags and choices from the generated ``completion_data``, RPC method names
from rpc.discover (generated too), and market symbols, accounts, tokens and providers from the running
daemon (one short call; nothing is printed when it cannot be reached)."""

from __future__ import annotations

import os
from typing import Any

from . import completion_data as data

COMMANDS: dict[str, dict[str, Any]] = data.COMMANDS  # type: ignore[assignment]  # a generated literal

GLOBAL_VALUES = {"--socket": "files"}
GLOBAL_FLAGS = ["--json", "--socket"]
FILES = ":files"  # first line of the answer: let the shell complete file names

BASH = r"""# bash completion for tachyon-ctl; install: tachyon-ctl completion bash | sudo tee /etc/bash_completion.d/tachyon-ctl >/dev/null
_tachyon_ctl() {
    local cur="${COMP_WORDS[COMP_CWORD]}" IFS=$'\n'
    local -a candidates
    candidates=($(tachyon-ctl __complete "$((COMP_CWORD - 1))" "${COMP_WORDS[@]:1}" 2>/dev/null))
    if [[ "${candidates[0]}" == ":files" ]]; then
        COMPREPLY=($(compgen -f -- "$cur"))
    else
        COMPREPLY=("${candidates[@]}")
    fi
}
complete -F _tachyon_ctl tachyon-ctl
"""

ZSH = r'''#compdef tachyon-ctl
# zsh completion for tachyon-ctl; install: tachyon-ctl completion zsh > "${fpath[1]}/_tachyon-ctl"
_tachyon_ctl() {
    local -a candidates
    candidates=("${(@f)$(tachyon-ctl __complete $((CURRENT - 2)) "${(@)words[2,-1]}" 2>/dev/null)}")
    candidates=(${candidates:#})
    if [[ "${candidates[1]}" == ":files" ]]; then
        _files
    else
        compadd -- "${candidates[@]}"
    fi
}
if [[ "${funcstack[1]}" == "_tachyon-ctl" ]]; then
    _tachyon_ctl "$@"
else
    compdef _tachyon_ctl tachyon-ctl
fi
'''


def script(shell: str) -> str:
    return {"bash": BASH, "zsh": ZSH}[shell]


def _socket(words: list[str]) -> str | None:
    for i, w in enumerate(words):
        if w == "--socket" and i + 1 < len(words):
            return words[i + 1]
        if w.startswith("--socket="):
            return w.split("=", 1)[1]
    return None


def dynamic(kind: str, socket_path: str | None) -> list[str]:
    """Names the daemon knows; [] when it cannot be reached within a second."""
    from .client import Client

    method, field = {"markets": ("dex.markets", "symbol"), "accounts": ("accounts.list", "name"),
                     "tokens": ("tokens.list", "symbol"), "providers": ("daemon.info", "onramp_providers")}[kind]
    try:
        with Client(socket_path, timeout_s=1.0) as client:
            result: Any = client.call(method)
    except Exception:  # noqa: BLE001 - completion never fails loudly
        return []
    if isinstance(result, dict):
        return [str(x) for x in result.get(field, [])]
    return [str(r.get(field)) for r in result if isinstance(r, dict) and r.get(field)]


def candidates(cword: int, words: list[str]) -> list[str]:
    """What may come at ``words[cword]`` (words without the program name)."""
    words = words + [""] * (cword + 1 - len(words))
    cur = words[cword]
    path: list[str] = []
    positional_used = False
    i = 0
    while i < cword:
        w = words[i]
        node = COMMANDS.get(" ".join(path), {})
        if w.startswith("-"):
            if "=" not in w and (w in node.get("values", {}) or w in GLOBAL_VALUES):
                i += 1  # the flag's value
        elif w in node.get("subs", []):
            path.append(w)
        else:
            positional_used = True
        i += 1
    node = COMMANDS.get(" ".join(path), {})
    values = {**GLOBAL_VALUES, **node.get("values", {})}
    prev = words[cword - 1] if cword > 0 else ""
    if prev in values and prev.startswith("-"):
        kind = values[prev]
        found = kind if isinstance(kind, list) else (
            [FILES] if kind == "files" else dynamic(kind, _socket(words) or os.environ.get("TACHYON_SOCKET")) if kind
            else [])
    elif cur.startswith("-"):
        found = sorted(set(node.get("flags", [])) | set(GLOBAL_FLAGS))
    elif node.get("subs"):
        found = node["subs"]
    elif isinstance(node.get("positional"), list) and not positional_used:
        found = node["positional"]
    elif node.get("positional") == "methods" and not positional_used:
        found = data.METHODS
    elif node.get("positional") == "files" and not positional_used:
        found = [FILES]
    else:
        found = []
    if found == [FILES]:
        return found
    return sorted(c for c in found if c.startswith(cur))


def complete_main(argv: list[str]) -> int:
    """``tachyon-ctl __complete CWORD WORD...``: one candidate per line."""
    try:
        cword = int(argv[0])
    except (IndexError, ValueError):
        return 2
    print("\n".join(candidates(cword, argv[1:])))
    return 0
