"""The layout keeps its promises: no import cycle in tachyond, imports run one way (runtime -> domains ->
storage -> the public protocol modules), and plugins keep to the public API named in tachyond/__init__.py."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import tachyond

ROOT = Path(tachyond.__file__).resolve().parent.parent
PACKAGE = ROOT / "tachyond"
PLUGINS = ROOT / "plugins"

# The layers, lowest first. A module may import its own layer or a lower one, never a higher one.
# Keys are dotted prefixes; the longest matching prefix decides.
LAYERS: dict[str, int] = {
    # 0: the public protocol modules plugins use, and the package itself
    "tachyond": 0,
    "tachyond.errors": 0,
    "tachyond.amounts": 0,
    "tachyond.engine": 0,
    "tachyond.providers": 0,
    "tachyond.matching": 0,
    "tachyond.hookspecs": 0,
    "tachyond.config": 0,
    "tachyond.plugins": 0,
    "tachyond.jsonx": 0,  # the wire encoding (msgspec or stdlib) storage, rpc and plugins share
    # 1: the RPC protocol and registry every domain's api registers into; log helpers
    "tachyond.rpc": 1,
    "tachyond.runtime.logs": 1,
    "tachyond.runtime.metrics": 1,
    "tachyond.runtime.hardening": 1,  # private files and dirs (umask, modes): the wallet file uses it
    # 2: storage: the wallet file, its writer and the ledger's journal
    "tachyond.wallet": 2,
    "tachyond.ledger.journal": 2,
    # 3: the domains
    "tachyond.wallet.api": 3,
    "tachyond.ledger": 3,
    "tachyond.dex": 3,
    "tachyond.onramp": 3,
    # 4: runtime: the daemon wires it all
    "tachyond.rpc.server": 4,
    "tachyond.rpc.guards": 4,  # the socket server's connection guards (peer credentials, caps, idle timeout)
    "tachyond.rpc.outbox": 4,  # the socket server's per-connection answers on their way out
    "tachyond.rpc.docgen": 4,
    "tachyond.rpc.completion_gen": 4,  # like docgen: builds the daemon's registry to write tachyon-ctl's data
    "tachyond.wallet.inspect": 4,  # the `tachyond inspect` command: reads every domain's schema
    "tachyond.runtime": 4,
    "tachyond.http": 4,
    "tachyond.daemon": 4,
    "tachyond.__main__": 4,
}


def module_name(path: Path, base: Path, top: str) -> str:
    parts = [top, *path.relative_to(base).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def resolve(module: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    parts = module.split(".") if is_pkg else module.split(".")[:-1]
    parts = parts[: len(parts) - (node.level - 1)]
    return ".".join([*parts, *([node.module] if node.module else [])])


def modules() -> dict[str, Path]:
    return {module_name(p, PACKAGE, "tachyond"): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str], *, module_level: bool) -> set[str]:
    """The tachyond modules ``name`` imports (module-level statements only, or every import)."""
    tree = ast.parse(path.read_text())
    # `if TYPE_CHECKING:` imports do not run: annotations only.
    typing_only = {id(n) for node in ast.walk(tree)
                   if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
    nodes = tree.body if module_level else list(ast.walk(tree))
    out = set()
    for node in nodes:
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom):
            base = resolve(name, path.name == "__init__.py", node)
            for a in node.names:
                target = f"{base}.{a.name}"
                out.add(target if target in known else base)
    return {m for m in out if m in known and m != name}


def graph(*, module_level: bool) -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(name, path, set(mods), module_level=module_level) for name, path in mods.items()}


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(g.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(g):
        if n not in state and (found := visit(n)):
            return found
    return None


def layer(name: str) -> int:
    best = max((k for k in LAYERS if name == k or name.startswith(k + ".")), key=len)
    return LAYERS[best]


def test_no_import_cycle_at_module_level():
    assert find_cycle(graph(module_level=True)) is None


def test_no_import_cycle_even_through_imports_inside_functions():
    """A lazy import inside a function must not be how a cycle is dodged."""
    assert find_cycle(graph(module_level=False)) is None


def test_imports_run_from_runtime_down_to_the_protocol_modules():
    wrong = [f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})"
             for a, targets in graph(module_level=False).items() for b in sorted(targets)
             if layer(b) > layer(a) and not b.startswith(a + ".")]
    assert wrong == []


def test_the_public_modules_exist():
    known = set(modules())
    assert set(tachyond.PUBLIC_MODULES) <= known


def plugin_imports() -> list[tuple[str, int, str, list[str]]]:
    """(file, line, tachyond module, imported names) for every tachyond import under plugins/."""
    out = []
    for path in sorted(PLUGINS.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] == "tachyond":
                out.append((rel, node.lineno, node.module or "", [a.name for a in node.names]))
            elif isinstance(node, ast.Import):
                out += [(rel, node.lineno, a.name, []) for a in node.names if a.name.split(".")[0] == "tachyond"]
    return out


def test_plugins_import_only_the_public_api():
    found = plugin_imports()
    assert found, "the built-in plugins import tachyond: the scan found nothing"
    bad = []
    for rel, line, module, names in found:
        if module not in tachyond.PUBLIC_MODULES:
            bad.append(f"{rel}:{line}: imports {module}, not a public module")
        # `from tachyond import errors` names a module: it must be public too.
        private_modules = set(modules()) - set(tachyond.PUBLIC_MODULES)
        bad += [f"{rel}:{line}: imports {module}.{n}, not a public module" for n in names
                if module == "tachyond" and f"tachyond.{n}" in private_modules]
        bad += [f"{rel}:{line}: imports the private name {module}.{n}" for n in names if n.startswith("_")]
    assert bad == []


@pytest.mark.parametrize("source, why", [
    ("from tachyond.config import _markets\n", "private name"),
    ("from tachyond.daemon import Daemon\n", "not a public module"),
    ("import tachyond.wallet\n", "not a public module"),
])
def test_the_public_api_check_catches(tmp_path, monkeypatch, source, why):
    """The check above fails on the imports it exists to catch."""
    (tmp_path / "plugins" / "tachyon_bad").mkdir(parents=True)
    (tmp_path / "plugins" / "tachyon_bad" / "__init__.py").write_text(source)
    monkeypatch.setattr(f"{__name__}.PLUGINS", tmp_path / "plugins")
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    with pytest.raises(AssertionError, match=why):
        test_plugins_import_only_the_public_api()
