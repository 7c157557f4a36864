#!/usr/bin/env python3
"""Move tachyond's flat modules into one package per domain and rewrite every reference (issue 12).

Idempotent: run it again and it changes nothing. Run from the repository root, on a clean work tree:

    python tools/relayout.py            # phase 1: whole-module moves (git mv) + import/path rewrite
    python tools/relayout.py --splits   # phase 2: move named top-level objects between modules (SPLITS)
    python tools/relayout.py --check    # print what would change, change nothing

Phase 1 moves each module of MODULE_MOVES with `git mv` (so `git log --follow` keeps its history),
rewrites imports with the ast (absolute, relative, `from pkg import module`, lazy imports inside
functions), then dotted paths (`"tachyond.dex.DexService"` in monkeypatch/subprocess strings,
`python -m tachyond.docgen`, entry points) and file paths (`tachyond/dex.py`, `tests/test_dex.py`)
in every text file of the repo. Logger names (`getLogger("tachyond.dex")`) are left alone: they are
part of what operators see.

Phase 2 (SPLITS) moves named top-level functions/classes/assignments from one module to another with
the ast, carrying the banner comments just above each object, adding the imports the moved code needs
(a copy of the source module's imports, pruned by `ruff --fix`), and rewrites every `from A import name`
in the repo to the name's new home. A split that would make the two modules import each other stops
with the names that tie them.
"""

from __future__ import annotations

import argparse
import ast
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# ---------------------------------------------------------------------------------------------------
# The mapping table. Old dotted module -> new dotted module. Public protocol modules (hookspecs,
# plugins, engine, providers, matching, amounts, errors, config), daemon and http do not move.
MODULE_MOVES: dict[str, str] = {
    "tachyond.rpc": "tachyond.rpc.server",           # split after: protocol, dispatch, server
    "tachyond.docgen": "tachyond.rpc.docgen",
    "tachyond.wallet.store": "tachyond.wallet.wallet",  # split after: writer, wallet
    "tachyond.wallet_api": "tachyond.wallet.api",   # split after: ledger.api
    "tachyond.ledger": "tachyond.ledger.service",   # split after: journal, service, verify
    "tachyond.dex": "tachyond.dex.service",         # split after: service, watch, recovery
    "tachyond.dex_api": "tachyond.dex.api",
    "tachyond.dex_batch": "tachyond.dex.batch",
    "tachyond.dex_market": "tachyond.dex.market",
    "tachyond.dex_store": "tachyond.dex.store",
    "tachyond.onramp": "tachyond.onramp.service",   # split after: inbox, reconcile, service
    "tachyond.onramp_rpc": "tachyond.onramp.api",
    "tachyond.onramp_store": "tachyond.onramp.store",
    "tachyond.logs": "tachyond.runtime.logs",
    "tachyond.metrics": "tachyond.runtime.metrics",
    "tachyond.systemd": "tachyond.runtime.systemd",
    "tachyond.devmode": "tachyond.runtime.devmode",
    # Modules merged after the script was first written (issues 9, 10, 11, 13, 15, torture).
    "tachyond.dex_checks": "tachyond.dex.checks",
    "tachyond.onramp_page": "tachyond.onramp.page",
    "tachyond.reload": "tachyond.runtime.reload",
    "tachyond.hardening": "tachyond.runtime.hardening",
    "tachyond.completion_gen": "tachyond.rpc.completion_gen",
    "tachyond.inspect_wallet": "tachyond.wallet.inspect",
    # tachyond.jsonx stays: a protocol-level encoding used by storage, rpc and a plugin (layer 0).
    # The Stripe emulator becomes a package; its module moves to emulator/app.py (split after).
    "tachyon_stripe.emulator": "tachyon_stripe.emulator.app",
}

# Old modules that become packages whose __init__ keeps a small public face: these names stay importable
# from the old path (documented plugin API / entry points), everything else moves to the new module.
FACADES: dict[str, list[str]] = {
    "tachyond.rpc": ["Param"],  # docs/plugins.md: plugins register methods with tachyond.rpc.Param
    "tachyon_stripe.emulator": ["EmulatorConfig", "serve_emulator", "main"],  # the tachyon-stripe-emulator command
}

# Docstrings of the packages phase 1 creates.
PACKAGES: dict[str, str] = {
    "tachyond.rpc": "JSON-RPC 2.0 over the Unix socket: protocol, dispatch (registry, call context), server, docgen.",
    "tachyond.ledger": "The double-entry token ledger: journal (LedgerTx), service (Ledger), verify, api.",
    "tachyond.dex": "The DEX: service (locks, settlement), market, store, watch, recovery, api.",
    "tachyond.onramp": "Stripe Crypto Onramp: service, inbox (webhooks, worker), reconcile, store, api.",
    "tachyond.runtime": "Runtime plumbing the daemon wires together: logs, metrics, systemd, devmode, reload, hardening.",  # noqa: E501 (shown verbatim)
    "tachyon_stripe.emulator": "An in-repo Stripe Crypto Onramp emulator (the tachyon-stripe-emulator command).",
}

# Other files that move with their module (git mv).
FILE_MOVES: dict[str, str] = {
    "plugins/tachyon_stripe/checkout.html": "plugins/tachyon_stripe/emulator/checkout.html",  # read by emulator/app.py
}

# Test files move into folders mirroring the packages. Cross-importing test modules stay together.
TEST_MOVES: dict[str, str] = {
    "tests/test_wallet.py": "tests/wallet/test_wallet.py",
    "tests/test_wallet_rpc.py": "tests/wallet/test_wallet_rpc.py",
    "tests/test_ledger.py": "tests/ledger/test_ledger.py",
    "tests/test_ledger_properties.py": "tests/ledger/test_ledger_properties.py",
    "tests/test_dex.py": "tests/dex/test_dex.py",
    "tests/test_dex_helpers.py": "tests/dex/test_dex_helpers.py",
    "tests/test_dex_properties.py": "tests/dex/test_dex_properties.py",
    "tests/test_dex_recovery.py": "tests/dex/test_dex_recovery.py",
    "tests/test_dex_watch.py": "tests/dex/test_dex_watch.py",
    "tests/test_engines.py": "tests/engines/test_engines.py",
    "tests/test_engine_differential.py": "tests/engines/test_engine_differential.py",
    "tests/test_http_engine.py": "tests/engines/test_http_engine.py",
    "tests/test_http_engine_daemon.py": "tests/engines/test_http_engine_daemon.py",
    "tests/test_onramp.py": "tests/onramp/test_onramp.py",
    "tests/test_onramp_browser.py": "tests/onramp/test_onramp_browser.py",
    "tests/test_webhooks.py": "tests/onramp/test_webhooks.py",
    "tests/test_stripe_provider.py": "tests/onramp/test_stripe_provider.py",
    "tests/test_stripe_emulator.py": "tests/onramp/test_stripe_emulator.py",
    "tests/test_rpc_properties.py": "tests/rpc/test_rpc_properties.py",
    "tests/test_rpc_robustness.py": "tests/rpc/test_rpc_robustness.py",
    "tests/test_rpc_spec.py": "tests/rpc/test_rpc_spec.py",
    "tests/test_ctl.py": "tests/rpc/test_ctl.py",
    "tests/test_daemon_lifecycle.py": "tests/runtime/test_daemon_lifecycle.py",
    "tests/test_http.py": "tests/runtime/test_http.py",
    "tests/test_plugins.py": "tests/runtime/test_plugins.py",
    "tests/test_addresses.py": "tests/runtime/test_addresses.py",
    # Test files merged after the script was first written.
    "tests/test_wallet_kdf.py": "tests/wallet/test_wallet_kdf.py",
    "tests/test_rotation.py": "tests/wallet/test_rotation.py",
    "tests/test_secrets_in_memory.py": "tests/wallet/test_secrets_in_memory.py",
    "tests/test_upgrade.py": "tests/wallet/test_upgrade.py",
    "tests/test_disk_full.py": "tests/wallet/test_disk_full.py",
    "tests/test_history_index.py": "tests/ledger/test_history_index.py",
    "tests/test_money_exact.py": "tests/ledger/test_money_exact.py",
    "tests/test_paging.py": "tests/dex/test_paging.py",
    "tests/test_dex_blindspots.py": "tests/dex/test_dex_blindspots.py",
    "tests/test_http_engine_shared.py": "tests/engines/test_http_engine_shared.py",
    "tests/test_http_engine_lying.py": "tests/engines/test_http_engine_lying.py",
    "tests/test_http_engine_transport.py": "tests/engines/test_http_engine_transport.py",
    "tests/test_onramp_production.py": "tests/onramp/test_onramp_production.py",
    "tests/test_onramp_gates.py": "tests/onramp/test_onramp_gates.py",
    "tests/test_completion.py": "tests/rpc/test_completion.py",
    "tests/test_jsonx.py": "tests/rpc/test_jsonx.py",
    "tests/test_net_hardening.py": "tests/runtime/test_net_hardening.py",
    "tests/test_reload.py": "tests/runtime/test_reload.py",
    "tests/test_files.py": "tests/runtime/test_files.py",
    "tests/test_unit_sandbox.py": "tests/runtime/test_unit_sandbox.py",
    "tests/test_http_allow_ips.py": "tests/runtime/test_http_allow_ips.py",
}

# Phase 2: (source module, target module, [top-level names]). Applied in order; each step is a no-op
# once its names live in the target. Keep the lists in step with RELAYOUT-NOTES.md.
SPLITS: list[tuple[str, str, list[str]]] = [
    # rpc: the JSON-RPC protocol objects, then the registry, dispatch and call context; the socket server stays.
    ("tachyond.rpc.server", "tachyond.rpc.protocol", [
        "Handler", "_JSON_TYPES", "Param", "_json_type", "Method", "_error", "_valid_id", "_no_constant", "_dump"]),
    ("tachyond.rpc.server", "tachyond.rpc.dispatch", [
        "CORE_NAMESPACES", "Connection", "_CONNECTION", "_AFTER_ANSWER", "current_connection", "detach_call_context",
        "after_answer", "Registry", "Dispatcher", "MAX_BATCH", "LineError", "_WS", "_DECODER", "parse_line",
        "_FAST_DECODE"]),
    # ledger: the journal (postings, LedgerTx and the rules it enforces), the audit, and the Ledger service.
    ("tachyond.ledger.service", "tachyond.ledger.journal", [
        "BUCKETS", "MAX_KEY_CHARS", "MAX_MEMO_CHARS", "ZERO_MAC", "_NAME", "USER_ACCOUNT_RE", "SYSTEM_ACCOUNT_RE",
        "_KIND_RE", "LEDGER_SCHEMA", "_fmt_minor", "Posting", "lock_postings", "release_postings", "is_user_account",
        "_classify", "_kind_ok", "check_user_account", "check_amount_minor", "_check_text", "entry_dict",
        "_same_content", "LedgerTx"]),
    ("tachyond.ledger.service", "tachyond.ledger.verify", ["_verify_sync", "_replay", "_compare_stored"]),
    # wallet: the transaction objects ops get (the writer's half); the Writer class itself is carved out of
    # Wallet by hand (RELAYOUT-NOTES.md, step 3).
    ("tachyond.wallet.wallet", "tachyond.wallet.writer", [
        "_STOP", "_MISSING", "DIRTY", "aad", "dumps", "_Access", "ReadTx",
        "Tx", "_Op", "_reschedule_all"]),
    # dex: the trade feed's watcher.
    ("tachyond.dex.service", "tachyond.dex.watch", ["WATCH_BUFFER", "Watcher"]),
]

# Module-level names a split copies into the new module instead of importing them.
COPY_NAMES = {"log"}

# One-line docstrings of the modules SPLITS creates.
SPLIT_DOCS: dict[str, str] = {
    "tachyond.rpc.protocol": "JSON-RPC 2.0 protocol objects: parameters, methods, error answers, the wire encoding.",
    "tachyond.rpc.dispatch": "The method registry, request dispatch and the call context (connection, answer hooks).",
    "tachyond.ledger.journal": "The journal: postings, LedgerTx (balances, holds, hash-chained entries) and its rules.",
    "tachyond.ledger.verify": "ledger.verify: replay the journal and compare it with the stored balances and holds.",
    "tachyond.dex.watch": "dex.watch: a connection's subscription to settled trades.",
    "tachyond.wallet.writer": "The one writer (group commit) and the transaction objects its ops get (Tx, ReadTx).",
}

# Top-level import roots whose modules live under these directories.
SOURCE_ROOTS = {"tachyond": ROOT / "tachyond", "tachyon_ctl": ROOT / "tachyon_ctl"}
for _p in sorted((ROOT / "plugins").glob("tachyon_*")):
    SOURCE_ROOTS[_p.name] = _p

TEXT_SUFFIXES = {".py", ".md", ".toml", ".yaml", ".yml", ".cfg", ".ini", ".txt", ".service", ".lua", ".sh", ".html"}
TEXT_NAMES = {"Makefile", "run"}
SKIP_DIRS = {".git", ".venv", "__pycache__", ".pytest_cache", ".hypothesis", ".mypy_cache", ".ruff_cache",
             "node_modules", ".tachyon-dev"}
SKIP_FILES = {"tools/relayout.py", "tools/RELAYOUT-NOTES.md", "RELAYOUT-NOTES.md", "tests/test_layout.py"}

CHECK = False
CHANGED: list[str] = []


# ---------------------------------------------------------------------------------------------------
# Paths and module names

def module_path(module: str) -> Path | None:
    """The file that holds `module` today (x.py or x/__init__.py), or None."""
    top, *rest = module.split(".")
    base = SOURCE_ROOTS.get(top)
    if base is None:
        return None
    p = base.joinpath(*rest) if rest else base
    if p.with_suffix(".py").is_file() and rest:
        return p.with_suffix(".py")
    if (p / "__init__.py").is_file():
        return p / "__init__.py"
    return None


def new_module_file(module: str) -> Path:
    top, *rest = module.split(".")
    return SOURCE_ROOTS[top].joinpath(*rest).with_suffix(".py")


def file_module(path: Path) -> tuple[str, bool] | None:
    """(dotted module name, is_package) of a source file, or None for files outside a package root."""
    for top, base in SOURCE_ROOTS.items():
        try:
            rel = path.resolve().relative_to(base.resolve())
        except ValueError:
            continue
        parts = [top, *rel.with_suffix("").parts]
        if parts[-1] == "__init__":
            return ".".join(parts[:-1]), True
        return ".".join(parts), False
    return None


def rel_path(p: Path) -> str:
    return p.resolve().relative_to(ROOT).as_posix()


def repo_text_files() -> list[Path]:
    out = []
    for p in sorted(ROOT.rglob("*")):
        if any(part in SKIP_DIRS for part in p.relative_to(ROOT).parts):
            continue
        if not p.is_file() or rel_path(p) in SKIP_FILES:
            continue
        if p.suffix in TEXT_SUFFIXES or p.name in TEXT_NAMES:
            out.append(p)
    return out


def write(path: Path, text: str) -> None:
    CHANGED.append(rel_path(path))
    if not CHECK:
        path.write_text(text)


def git(*args: str) -> None:
    print("git", *args)
    if not CHECK:
        subprocess.run(["git", *args], cwd=ROOT, check=True)


# ---------------------------------------------------------------------------------------------------
# Import rewriting (ast)

def children_of(package: str) -> set[str]:
    """Names of the submodules `package` has in the target layout (or on disk)."""
    kids = set()
    for new in [*MODULE_MOVES.values(), *(t for _s, t, _n in SPLITS)]:
        head, _, leaf = new.rpartition(".")
        if head == package:
            kids.add(leaf)
    top, *rest = package.split(".")
    if top in SOURCE_ROOTS:
        d = SOURCE_ROOTS[top].joinpath(*rest)
        if d.is_dir():
            kids |= {p.stem for p in d.glob("*.py") if p.stem != "__init__"}
            kids |= {p.name for p in d.iterdir() if (p / "__init__.py").is_file()}
    return kids


def map_module(module: str) -> str:
    new = MODULE_MOVES.get(module, module)
    if new.startswith(module + ".") and (path := module_path(module)) is not None and path.name == "__init__.py":
        return module  # moved already: the old name is now the package
    return new


def name_home(module: str, name: str, defined: dict[str, set[str]]) -> str:
    """Where `name`, imported from `module`, lives after the splits."""
    for src, dst, names in SPLITS:
        if map_module(module) == src and name in names:
            return dst
    return map_module(module)


def resolve(base_module: str, is_pkg: bool, level: int, target: str | None) -> str:
    if level == 0:
        return target or ""
    parts = base_module.split(".")
    if not is_pkg:
        parts = parts[:-1]
    if level > 1:
        parts = parts[: len(parts) - (level - 1)]
    return ".".join([*parts, *([target] if target else [])])


def relative_spec(from_module: str, from_is_pkg: bool, target: str) -> str:
    """`from` spec of `target` as seen from `from_module`: relative within one top package."""
    pkg = from_module.split(".") if from_is_pkg else from_module.split(".")[:-1]
    t = target.split(".")
    if not pkg or pkg[0] != t[0]:
        return target
    c = 0
    while c < min(len(pkg), len(t)) and pkg[c] == t[c]:
        c += 1
    level = len(pkg) - c + 1
    return "." * level + ".".join(t[c:])


def alias_text(a: ast.alias) -> str:
    return a.name + (f" as {a.asname}" if a.asname else "")


def wrap_from(indent: str, spec: str, names: list[str]) -> str:
    one = f"{indent}from {spec} import {', '.join(names)}"
    if len(one) <= 120:
        return one
    lines, cur = [], f"{indent}from {spec} import ("
    for i, n in enumerate(names):
        piece = n + (", " if i < len(names) - 1 else ")")
        if len(cur) + len(piece.rstrip()) > 120:
            lines.append(cur.rstrip())
            cur = indent + "    "
        cur += piece
    lines.append(cur)
    return "\n".join(lines)


def rewrite_imports(path: Path, text: str, new_mod: tuple[str, bool] | None) -> str:
    """Rewrite the import statements of one file; `new_mod` is the file's module after its own move."""
    old_mod = file_module(path)
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return text
    lines = text.splitlines(keepends=True)
    offsets = [0]
    for ln in lines:
        offsets.append(offsets[-1] + len(ln))

    def pos(lineno: int, col: int) -> int:
        return offsets[lineno - 1] + len(lines[lineno - 1].encode()[:col].decode(errors="ignore"))

    edits: list[tuple[int, int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            new_names = []
            for a in node.names:
                m = map_module(a.name)
                if m != a.name and a.asname is None and "." in a.name:
                    # `import tachyond.dex` binds `tachyond`; usages `tachyond.dex.x` are fixed by the
                    # dotted-path pass.
                    pass
                new_names.append(m + (f" as {a.asname}" if a.asname else ""))
            if new_names != [alias_text(a) for a in node.names]:
                start, end = pos(node.lineno, node.col_offset), pos(node.end_lineno, node.end_col_offset)
                edits.append((start, end, "import " + ", ".join(new_names)))
        elif isinstance(node, ast.ImportFrom):
            if node.level and old_mod is None:
                continue
            base = resolve(old_mod[0], old_mod[1], node.level, node.module) if node.level else (node.module or "")
            if base.split(".")[0] not in SOURCE_ROOTS:
                continue
            groups: dict[str, list[str]] = {}
            for a in node.names:
                full = f"{base}.{a.name}"
                if full in MODULE_MOVES and not (MODULE_MOVES[full].startswith(full + ".")
                                                 and module_path(full) and module_path(full).name == "__init__.py"):
                    new_full = MODULE_MOVES[full]
                    parent, _, leaf = new_full.rpartition(".")
                    asname = a.asname or a.name
                    groups.setdefault(parent, []).append(leaf + (f" as {asname}" if asname != leaf else ""))
                elif base in FACADES and a.name in FACADES[base]:
                    groups.setdefault(base, []).append(alias_text(a))
                else:
                    home = name_home(base, a.name, {})
                    groups.setdefault(home, []).append(alias_text(a))
            file_moves = bool(node.level) and new_mod is not None and old_mod is not None and new_mod[0] != old_mod[0]
            if list(groups) == [base] and groups[base] == [alias_text(a) for a in node.names] and not file_moves:
                continue
            start, end = pos(node.lineno, node.col_offset), pos(node.end_lineno, node.end_col_offset)
            indent = ""  # the statement keeps its own indentation before `start`
            stmts = []
            me = new_mod or old_mod
            for target, names in groups.items():
                spec = relative_spec(me[0], me[1], target) if node.level and me else target
                stmts.append(wrap_from(indent, spec, names))
            line_indent = re.match(r"[ \t]*", lines[node.lineno - 1]).group(0)
            if len(groups) == 1 and list(groups.values())[0] == [alias_text(a) for a in node.names]:
                # Only the module changed: keep the names' own formatting.
                seg = text[start:end]
                spec = next(iter(stmts)).split(" import ", 1)[0][len("from "):]
                repl = re.sub(r"^from\s+[\w.]+\s+import", f"from {spec} import", seg, count=1)
                edits.append((start, end, repl))
            else:
                edits.append((start, end, ("\n" + line_indent).join(stmts)))
    if not edits:
        return text
    for start, end, repl in sorted(edits, reverse=True):
        text = text[:start] + repl + text[end:]
    return text


# ---------------------------------------------------------------------------------------------------
# Dotted paths and file paths in any text

DOTTED = re.compile(r"(?<![\w.])((?:tachyond|tachyon_stripe)(?:\.[A-Za-z_]\w*)+)")
GETLOGGER = re.compile(r"getLogger\(\s*[\"']$")


def rewrite_dotted(text: str) -> str:
    def sub(m: re.Match) -> str:
        if GETLOGGER.search(text[max(0, m.start() - 40):m.start()]):
            return m.group(0)
        parts = m.group(1).split(".")
        for k in range(len(parts), 1, -1):
            cand = ".".join(parts[:k])
            if cand in FACADES and (len(parts) == k or parts[k] in FACADES[cand]):
                return m.group(0)  # the package's public face keeps this path
            if cand in MODULE_MOVES:
                new = MODULE_MOVES[cand]
                if new.startswith(cand + ".") and len(parts) > k and parts[k] in children_of(cand):
                    return m.group(0)  # already the new layout
                return ".".join([new, *parts[k:]])
        return m.group(0)

    return DOTTED.sub(sub, text)


def path_moves() -> dict[str, str]:
    moves = {**TEST_MOVES, **FILE_MOVES}
    for old, new in MODULE_MOVES.items():
        op, np_ = old.replace(".", "/") + ".py", new.replace(".", "/") + ".py"
        top = old.split(".")[0]
        if top != "tachyond":
            op, np_ = f"plugins/{op}", f"plugins/{np_}"
        moves[op] = np_
    return moves


def rewrite_paths(text: str) -> str:
    moves = path_moves()
    for old, new in sorted(moves.items(), key=lambda kv: -len(kv[0])):
        text = re.sub(r"(?<![\w/])" + re.escape(old) + r"(?!\w)", new, text)
        # `plugins/tachyon_stripe/emulator.py` also appears as `tachyon_stripe/emulator.py`.
        if old.startswith("plugins/"):
            text = re.sub(r"(?<![\w/])" + re.escape(old[len("plugins/"):]) + r"(?!\w)", new[len("plugins/"):], text)
        # Bare names that only ever meant one module (`dex_market.py`): docs say them so.
        base = old.rsplit("/", 1)[-1]
        if "_" in base and base.startswith(("dex_", "onramp_", "wallet_")):
            text = re.sub(r"(?<![\w/.])" + re.escape(base) + r"(?!\w)", new, text)
    return text


def fix_test_depth(text: str, depth: int) -> str:
    """A test file moved `depth` folders deeper: its `Path(__file__)...parent` chains climb as far."""
    return re.sub(r"(Path\(__file__\)(?:\.resolve\(\))?)((?:\.parent)+)",
                  lambda m: m.group(1) + m.group(2) + ".parent" * depth, text)


# ---------------------------------------------------------------------------------------------------
# Phase 1

def phase_moves() -> None:
    pending = {old: new for old, new in MODULE_MOVES.items() if module_path(old) is not None
               and not (module_path(old).name == "__init__.py")}
    # 1. Imports, computed against each file's current name and its name after the move.
    for path in repo_text_files():
        if path.suffix != ".py":
            continue
        fm = file_module(path)
        new_mod = None
        if fm and fm[0] in pending:
            new_mod = (pending[fm[0]], False)
        text = path.read_text()
        out = rewrite_imports(path, text, new_mod)
        if out != text:
            write(path, out)
    # 2. git mv, creating the packages.
    for old, new in pending.items():
        src, dst = module_path(old), new_module_file(new)
        pkg_dir = dst.parent
        for d in reversed([pkg_dir, *pkg_dir.parents]):
            if d == ROOT or ROOT not in d.parents:
                continue
            if not d.exists() and not CHECK:
                d.mkdir()
        git("mv", rel_path(src), rel_path(dst))
    for pkg, doc in PACKAGES.items():
        top, *rest = pkg.split(".")
        init = SOURCE_ROOTS[top].joinpath(*rest, "__init__.py")
        if not init.exists() and (CHECK or init.parent.is_dir()):
            body = f'"""{doc}"""\n'
            if pkg in FACADES:
                leaf = MODULE_MOVES[pkg].rsplit(".", 1)[1]
                names = FACADES[pkg]
                body += f"\nfrom .{leaf} import {', '.join(names)}\n\n__all__ = {names!r}\n".replace("'", '"')
            write(init, body)
            if pkg in FACADES and "main" in FACADES[pkg]:  # `python -m package` keeps working
                write(init.with_name("__main__.py"), "import sys\n\nfrom . import main\n\nsys.exit(main())\n")
            if not CHECK:
                git("add", rel_path(init.parent))
    for old, new in FILE_MOVES.items():
        if (ROOT / old).exists() and not (ROOT / new).exists():
            git("mv", old, new)
    for old, new in TEST_MOVES.items():
        src, dst = ROOT / old, ROOT / new
        if src.exists() and not dst.exists():
            if not CHECK:
                dst.parent.mkdir(parents=True, exist_ok=True)
            git("mv", old, new)
            if not CHECK:
                depth = len(Path(new).parts) - len(Path(old).parts)
                text = dst.read_text()
                out = fix_test_depth(text, depth)
                if out != text:
                    write(dst, out)
    # 3. Dotted and file paths everywhere; tests that scan tests/ look into its folders too.
    for path in repo_text_files():
        text = path.read_text()
        out = rewrite_paths(rewrite_dotted(text))
        if rel_path(path).startswith("tests/"):
            out = out.replace('(ROOT / "tests").glob("test_*.py")', '(ROOT / "tests").rglob("test_*.py")')
        if out != text:
            write(path, out)


# ---------------------------------------------------------------------------------------------------
# Phase 2: move named top-level objects between modules

def top_level_names(tree: ast.Module) -> dict[str, ast.stmt]:
    out: dict[str, ast.stmt] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out[node.name] = node
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                for n in ast.walk(t):
                    if isinstance(n, ast.Name):
                        out[n.id] = node
    return out


def annotation_nodes(nodes: list[ast.stmt]) -> set[int]:
    out: set[int] = set()
    for node in nodes:
        for n in ast.walk(node):
            anns = []
            if isinstance(n, ast.arg) and n.annotation is not None:
                anns.append(n.annotation)
            elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.returns is not None:
                anns.append(n.returns)
            elif isinstance(n, ast.AnnAssign):
                anns.append(n.annotation)
            for a in anns:
                out |= {id(x) for x in ast.walk(a)}
    return out


def used_names(nodes: list[ast.stmt], *, annotations: bool = False) -> set[str]:
    """Names the code uses at run time (or, with ``annotations``, only in annotations, which
    ``from __future__ import annotations`` leaves unevaluated)."""
    ann = annotation_nodes(nodes)
    run = {n.id for node in nodes for n in ast.walk(node) if isinstance(n, ast.Name) and id(n) not in ann}
    if not annotations:
        return run
    return {n.id for node in nodes for n in ast.walk(node) if isinstance(n, ast.Name) and id(n) in ann} - run


def block_span(lines: list[str], node: ast.stmt) -> tuple[int, int]:
    """0-based [start, end) lines of a top-level object with its decorators and the comments above it."""
    start = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))]) - 1
    while start > 0 and lines[start - 1].lstrip().startswith("#"):
        start -= 1
    end = node.end_lineno
    return start, end


def import_block(tree: ast.Module, lines: list[str]) -> str:
    out = []
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)) or (
                isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)):
            out.append("".join(lines[node.lineno - 1:node.end_lineno]))
    return "".join(out)


def split_one(src: str, dst: str, names: list[str]) -> bool:
    sp = module_path(src)
    if sp is None:
        sys.exit(f"split: {src} does not exist")
    stext = sp.read_text()
    stree = ast.parse(stext)
    defs = top_level_names(stree)
    todo = [n for n in names if n in defs]
    if not todo:
        return False
    missing = [n for n in names if n not in defs]
    dp = module_path(dst) or new_module_file(dst)
    dtext = dp.read_text() if dp.exists() else ""
    if missing and dtext:
        dnames = top_level_names(ast.parse(dtext))
        missing = [n for n in missing if n not in dnames]
    if missing:
        sys.exit(f"split {src} -> {dst}: not found: {missing}")
    lines = stext.splitlines(keepends=True)
    nodes = list(dict.fromkeys(defs[n] for n in todo))
    moved_names = {n for n, node in defs.items() if node in nodes}
    spans = sorted(block_span(lines, n) for n in nodes)
    remaining_nodes = [n for n in stree.body if n not in nodes and not isinstance(n, (ast.Import, ast.ImportFrom))]
    # What each side needs from the other.
    need_from_src = sorted((used_names(nodes) & set(defs)) - moved_names)
    need_from_dst = sorted(used_names(remaining_nodes) & moved_names)
    # A module's logger is copied, not imported: both modules log under the same name.
    copied = [n for n in need_from_src if n in COPY_NAMES]
    need_from_src = [n for n in need_from_src if n not in COPY_NAMES]
    types_from_src = sorted((used_names(nodes, annotations=True) & set(defs)) - moved_names - set(need_from_src))
    types_from_dst = sorted((used_names(remaining_nodes, annotations=True) & moved_names) - set(need_from_dst))
    if need_from_src and need_from_dst:
        sys.exit(f"split {src} -> {dst} would make a cycle: {dst} needs {need_from_src} from {src}, "
                 f"{src} needs {need_from_dst} from {dst}; move those too")
    moved_src = "\n\n".join("".join(lines[a:b]).strip("\n") for a, b in spans)
    keep, last = [], 0
    for a, b in spans:
        keep.append("".join(lines[last:a]))
        last = b
    keep.append("".join(lines[last:]))
    new_src = re.sub(r"\n{4,}", "\n\n\n", "".join(keep)).rstrip("\n") + "\n"
    dst_is_pkg = dp.name == "__init__.py"
    src_is_pkg = sp.name == "__init__.py"

    def absolutize(block: str, mod: str, is_pkg: bool, into: str, into_pkg: bool) -> str:
        t = ast.parse(block)
        out = []
        for node in t.body:
            if isinstance(node, ast.ImportFrom) and node.level:
                base = resolve(mod, is_pkg, node.level, node.module)
                spec = relative_spec(into, into_pkg, base)
                out.append(wrap_from("", spec, [alias_text(a) for a in node.names]))
            elif isinstance(node, ast.If):
                body = absolutize(textwrap.dedent("".join(ast.get_source_segment(block, b) + "\n" for b in node.body)),
                                  mod, is_pkg, into, into_pkg)
                out.append("if TYPE_CHECKING:\n" + textwrap.indent(body, "    ").rstrip("\n"))
            else:
                out.append(ast.get_source_segment(block, node))
        return "\n".join(out) + "\n"

    imports = absolutize(import_block(stree, lines), src, src_is_pkg, dst, dst_is_pkg)
    if need_from_src:
        imports += wrap_from("", relative_spec(dst, dst_is_pkg, src), need_from_src) + "\n"
    tail = "".join("\n" + ast.get_source_segment(stext, defs[n]) + "\n" for n in copied)
    if types_from_src:  # for annotations only: no import at run time, so no cycle
        imports += ("from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n"
                    + wrap_from("    ", relative_spec(dst, dst_is_pkg, src), types_from_src) + "\n")

    if need_from_dst or types_from_dst:
        src_import = wrap_from("", relative_spec(src, src_is_pkg, dst), need_from_dst) + "\n" if need_from_dst else ""
        if types_from_dst:
            src_import += ("from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n"
                           + wrap_from("    ", relative_spec(src, src_is_pkg, dst), types_from_dst) + "\n")
        # after the last top-level import of the source
        st = ast.parse(new_src)
        last_imp = max((n.end_lineno for n in st.body if isinstance(n, (ast.Import, ast.ImportFrom))), default=0)
        sl = new_src.splitlines(keepends=True)
        new_src = "".join(sl[:last_imp]) + src_import + "".join(sl[last_imp:])
    if dtext:
        dtree = ast.parse(dtext)
        dl = dtext.splitlines(keepends=True)
        last_imp = max((n.end_lineno for n in dtree.body if isinstance(n, (ast.Import, ast.ImportFrom))), default=0)
        if last_imp == 0 and dtree.body and isinstance(dtree.body[0], ast.Expr):
            last_imp = dtree.body[0].end_lineno
        new_dst = ("".join(dl[:last_imp]) + imports + tail + "".join(dl[last_imp:]).rstrip("\n")
                   + "\n\n\n" + moved_src + "\n")
    else:
        doc = f'"""{SPLIT_DOCS.get(dst, dst)}"""\n\nfrom __future__ import annotations\n\n'
        new_dst = doc + imports + tail + "\n\n" + moved_src + "\n"
    print(f"split {src} -> {dst}: {sorted(moved_names)}")
    if CHECK:
        return True
    if not dp.exists():
        dp.parent.mkdir(parents=True, exist_ok=True)
    dp.write_text(new_dst)
    sp.write_text(new_src)
    ruff_fix("F401,F811,I", (rel_path(dp), rel_path(sp)))
    git("add", rel_path(dp), rel_path(sp))
    # Every importer of a moved name.
    global SPLITS
    saved = SPLITS
    SPLITS = [(src, dst, sorted(moved_names))]
    try:
        for path in repo_text_files():
            if path.suffix != ".py":
                continue
            text = path.read_text()
            out = rewrite_imports(path, text, None)
            out = rewrite_split_dotted(out, src, dst, moved_names)
            if out != text:
                write(path, out)
        for path in repo_text_files():
            if path.suffix == ".md":
                text = path.read_text()
                out = rewrite_split_dotted(text, src, dst, moved_names)
                if out != text:
                    write(path, out)
    finally:
        SPLITS = saved
    return True


def rewrite_split_dotted(text: str, src: str, dst: str, names: set[str]) -> str:
    """`"tachyond.x.Name"` strings (monkeypatch targets, docs) follow a moved name."""
    for n in names:
        text = re.sub(r"(?<![\w.])" + re.escape(f"{src}.{n}") + r"(?!\w)", f"{dst}.{n}", text)
    return text


def phase_splits() -> None:
    for src, dst, names in SPLITS:
        split_one(src, dst, names)


def ruff_fix(
    select: str = "I", paths: tuple[str, ...] = ("tachyond", "tachyon_ctl", "plugins", "tests", "bench")
) -> None:
    """Import order (and, for split modules, unused imports) by ruff; F401 is never run on tests, whose
    imported fixtures look unused."""
    found = [p for p in (Path(sys.executable).with_name("ruff"), ROOT / ".venv" / "bin" / "ruff") if p.exists()]
    ruff = str(found[0]) if found else shutil.which("ruff")
    if CHECK:
        return
    if ruff is None:
        sys.exit("ruff not found: run with the project's .venv/bin/python (make install)")
    subprocess.run([ruff, "check", "--fix", "--select", select, "--quiet", *paths], cwd=ROOT)


def main() -> None:
    global CHECK
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--splits", action="store_true", help="phase 2: move named objects between modules")
    ap.add_argument("--check", action="store_true", help="report, change nothing")
    args = ap.parse_args()
    CHECK = args.check
    if args.splits:
        phase_splits()
    else:
        phase_moves()
    ruff_fix()
    for c in sorted(set(CHANGED)):
        print("rewrote", c)


if __name__ == "__main__":
    main()
