"""The HTTP side: /healthz, /metrics and the webhook route's refusals that need no provider."""

from __future__ import annotations

import httpx


def http_base(d) -> str:
    return d.call("daemon.info")["http"][0]


def test_healthz_ok(daemon_factory):
    d = daemon_factory().start()
    r = httpx.get(http_base(d) + "/healthz", timeout=10)
    assert r.status_code == 200 and r.json()["status"] == "ok"


def test_metrics_count_rpc_calls_and_errors_by_method(daemon_factory):
    d = daemon_factory(test_plugin=True).start()
    for _ in range(3):
        d.call("daemon.info")
    d.raw(b'{"jsonrpc":"2.0","method":"test.boom","id":1}\n')
    r = httpx.get(http_base(d) + "/metrics", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    lines = r.text.splitlines()
    calls = [line for line in lines if line.startswith('tachyon_rpc_calls_total{method="daemon.info"}')]
    assert calls and float(calls[0].split()[-1]) >= 4  # three here, one or more by the fixture's readiness probe
    assert 'tachyon_rpc_errors_total{code="-32040",method="test.boom"} 1.0' in lines


def test_unknown_provider_is_404_and_wrong_method_405(daemon_factory):
    d = daemon_factory().start()
    base = http_base(d)
    assert httpx.post(base + "/webhook/nosuch", json={}, timeout=10).status_code == 404
    assert httpx.get(base + "/webhook/stripe", timeout=10).status_code == 405
    assert httpx.get(base + "/nothing-here", timeout=10).status_code == 404


def test_an_early_refusal_does_not_stall_a_keep_alive_client(daemon_factory):
    """A webhook refused before its body is read (404 here) closes; the client's next request still works."""
    d = daemon_factory().start()
    base = http_base(d)
    with httpx.Client(timeout=5) as client:
        r = client.post(base + "/webhook/nosuch", content=b"x" * 30000, headers={"Content-Type": "application/json"})
        assert r.status_code == 404 and r.headers["connection"] == "close"
        assert client.get(base + "/healthz").status_code == 200


def test_onramp_without_a_provider_says_so(daemon_factory):
    d = daemon_factory().start()
    import json

    answer = json.loads(d.raw(b'{"jsonrpc":"2.0","method":"onramp.pending","id":1}\n'))
    assert answer["error"]["code"] == -32032, answer
    assert "onramp" in answer["error"]["message"]


def test_healthz_names_what_does_not_answer(daemon_factory):
    """With the RPC socket gone (unlinked under the running daemon), /healthz answers 503 naming it."""
    import os

    d = daemon_factory().start()
    base = http_base(d)
    os.unlink(d.socket)
    r = httpx.get(base + "/healthz", timeout=10)
    assert r.status_code == 503
    body = r.json()
    assert body["status"] == "unavailable" and "rpc_socket" in body["failing"]


def test_healthz_names_the_database_when_it_is_gone(daemon_factory):
    """With data_dir/wallet.db removed under the running daemon, /healthz answers 503 naming the DB: the name
    only; the path and the reason go to the daemon's log, not to whoever asks /healthz."""
    d = daemon_factory().start()
    base = http_base(d)
    assert httpx.get(base + "/healthz", timeout=10).status_code == 200
    db = d.dir / "data" / "wallet.db"
    db.rename(db.with_name("wallet.db.moved"))
    r = httpx.get(base + "/healthz", timeout=10)
    assert r.status_code == 503
    assert r.json() == {"status": "unavailable", "failing": ["db"]}
    assert str(d.dir) not in r.text and "missing" not in r.text
    assert "wallet.db is missing" in d.stderr()
    db.with_name("wallet.db.moved").rename(db)
    assert httpx.get(base + "/healthz", timeout=10).status_code == 200
