"""Plugins load through the ``tachyon`` entry points; failures are contained; every hook is documented and tested."""

from __future__ import annotations

import inspect
import json
import re
import sys
from pathlib import Path

import pytest
from conftest import PLUGIN_SITE, ROOT, base_document

from tachyond import hookspecs

HOOKS = sorted(name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
               if hasattr(fn, "tachyon_spec"))


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def plugged(daemon_factory, sockdir):
    """A daemon with the third-party test plugin, which logs every hook call."""
    log = sockdir / "hooks.jsonl"
    d = daemon_factory(test_plugin=True, env={"TACHYON_TESTPLUGIN_LOG": str(log)}).start()
    return d, log


def test_every_hook_is_documented_and_tested():
    docs = (ROOT / "docs" / "plugins.md").read_text()
    tests = "\n".join(p.read_text() for p in (ROOT / "tests").rglob("test_*.py"))
    assert len(HOOKS) >= 9
    for hook in HOOKS:
        assert re.search(rf"^### `{hook}\(", docs, re.M), f"docs/plugins.md lacks a section for hook {hook}"
        assert f"def test_hook_{hook}(" in tests, f"no test_hook_{hook} in tests/"
        assert getattr(hookspecs, hook).__doc__, f"hook {hook} has no docstring"


def test_plugin_error_names_the_plugin_and_the_daemon_stays_up(plugged):
    d, _ = plugged
    answer = json.loads(d.raw(b'{"jsonrpc":"2.0","method":"test.boom","id":1}\n'))
    assert answer["error"]["code"] == -32040
    assert "testplugin" in answer["error"]["message"] and "exploded" in answer["error"]["message"]
    assert d.call("daemon.info")["version"]
    listing = {p["name"]: p for p in d.call("plugins.list")}
    assert listing["testplugin"]["builtin"] is False and listing["testplugin"]["version"] == "1.0"
    assert "register_rpc_methods" in listing["testplugin"]["hooks"]
    assert all(listing[n]["builtin"] for n in listing if n != "testplugin")


@pytest.mark.parametrize("how", ["toml", "env"])
def test_blocked_plugin_is_not_loaded(daemon_factory, sockdir, how):
    if how == "toml":
        d = daemon_factory(base_document(sockdir, plugins={"disabled": ["testplugin"]}), test_plugin=True).start()
    else:
        d = daemon_factory(test_plugin=True, env={"TACHYON_DISABLED_PLUGINS": "testplugin"}).start()
    assert "testplugin" not in [p["name"] for p in d.call("plugins.list")]
    answer = json.loads(d.raw(b'{"jsonrpc":"2.0","method":"spec.get_data","id":1}\n'))
    assert answer["error"]["code"] == -32601


def test_method_collision_is_a_startup_error(daemon_factory):
    d = daemon_factory(test_plugin=True, env={"TACHYON_TESTPLUGIN_COLLIDE": "1"})
    d.start(wait=False)
    assert d.wait(30) == 1
    assert "daemon.info" in d.stderr() and "testplugin" in d.stderr()


def test_rpc_discover_lists_plugin_methods(plugged):
    d, _ = plugged
    doc = d.call("rpc.discover")
    assert doc["openrpc"].startswith("1.")
    names = {m["name"]: m for m in doc["methods"]}
    for core in ("rpc.discover", "daemon.info", "daemon.stop", "plugins.list"):
        assert core in names and names[core]["summary"]
    assert names["spec.subtract"]["x-plugin"] == "testplugin"
    assert [p["name"] for p in names["spec.subtract"]["params"]] == ["minuend", "subtrahend"]
    # The shape OpenRPC 1.2.6's meta-schema requires: known top-level members (or x-), info.title and
    # info.version, methods with name and params, content descriptors with name and schema, and
    # components.errors a map from a name to {code: int, message: str}.
    assert set(doc) <= {"openrpc", "info", "externalDocs", "servers", "methods", "components"}
    assert isinstance(doc["info"]["title"], str) and isinstance(doc["info"]["version"], str)
    for m in doc["methods"]:
        assert isinstance(m["name"], str) and isinstance(m["params"], list)
        for cd in [*m["params"], m["result"]]:
            assert isinstance(cd["name"], str) and isinstance(cd["schema"], dict)
    errs = doc["components"]["errors"]
    assert isinstance(errs, dict) and errs
    assert all(isinstance(e["code"], int) and isinstance(e["message"], str) for e in errs.values())
    assert errs["InvalidParams"]["code"] == -32602


def test_hook_register_rpc_methods(plugged):
    d, log = plugged
    assert d.call("spec.subtract", {"minuend": 5, "subtrahend": 7}) == -2
    assert {"hook": "register_rpc_methods"} in records(log)


def test_hook_register_engines(plugged):
    d, log = plugged
    assert {"hook": "register_engines"} in records(log)
    # The built-in engines register through the same hook as any third-party plugin.
    assert {"memory", "sqlite"} <= set(d.call("daemon.info")["engines"])


def test_hook_register_onramp_providers(plugged):
    d, log = plugged
    assert {"hook": "register_onramp_providers"} in records(log)
    from tachyond.config import from_mapping
    from tachyond.daemon import Daemon

    daemon = Daemon(from_mapping(base_document(Path("/tmp"))))
    daemon.load_plugins()
    assert daemon.provider_factories["stripe"][0] == "stripe"


def test_hook_register_address_validators(plugged):
    _, log = plugged
    assert {"hook": "register_address_validators"} in records(log)
    from tachyond.config import from_mapping
    from tachyond.daemon import Daemon
    from tachyond.errors import InvalidAddress

    sys.path.insert(0, str(PLUGIN_SITE))
    try:
        daemon = Daemon(from_mapping(base_document(Path("/tmp"))))
        daemon.load_plugins()
    finally:
        sys.path.remove(str(PLUGIN_SITE))
    plugin, validate = daemon.address_validators["testnet"]
    assert plugin == "testplugin" and validate("tn1abc") == "tn1abc"
    with pytest.raises(InvalidAddress):
        validate("0xabc")


def test_hook_register_background_tasks(plugged):
    d, log = plugged
    wait_for(log, "background_task_started")
    assert any(r["hook"] == "background_task_started" for r in records(log))
    assert d.call("daemon.info")["version"]


def wait_for(log: Path, hook: str, timeout_s: float = 10) -> None:
    """The hook runs just after READY, so a client may get in first: wait for its record."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not any(r["hook"] == hook for r in records(log)):
        time.sleep(0.05)


def test_hook_daemon_started(plugged):
    d, log = plugged
    wait_for(log, "daemon_started")
    started = [r for r in records(log) if r["hook"] == "daemon_started"]
    assert started == [{"hook": "daemon_started", "version": d.call("daemon.info")["version"]}]


def test_hook_daemon_stopping(plugged):
    d, log = plugged
    wait_for(log, "daemon_started")
    assert not any(r["hook"] == "daemon_stopping" for r in records(log))
    assert d.stop() == 0
    assert [r["hook"] for r in records(log)].count("daemon_stopping") == 1


def test_rpc_reference_is_generated_from_rpc_discover():
    """docs/rpc.md is what `python -m tachyond.rpc.docgen` writes: no method goes undocumented or stale."""
    from tachyond.rpc.docgen import discover_document, render

    assert (ROOT / "docs" / "rpc.md").read_text() == render(discover_document()), "run `make docs`"
def test_misspelled_hook_is_a_load_error_naming_the_plugin():
    """pluggy's error carries the plugin object, not its name: the message names it (was an AttributeError)."""
    from tachyond import hookimpl
    from tachyond.plugins import PluginLoadError, Plugins

    class Typo:
        @hookimpl
        def register_engine(self, register):  # the hook is register_engines
            pass

    plugins = Plugins()
    plugins.register(Typo(), "typo")
    with pytest.raises(PluginLoadError, match="plugin 'typo' implements an unknown hook"):
        plugins.load_entry_points()
