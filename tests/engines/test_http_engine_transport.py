"""Transport of the remote engine: https:// off loopback, TLS with a pinned CA, token files, unix sockets."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path
from typing import Any

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from tachyon_http_engine import HttpEngine
from tachyon_http_engine.backend import ServerBackend
from tachyon_http_engine.server import EngineApp, parse_config
from test_http_engine import TOKEN, ZEC, ServerProc, order, server_document

from tachyond.engine import EngineContext, EngineUnavailable
from tachyond.errors import EngineError


@pytest.mark.parametrize("url", ["http://10.0.0.7:9010", "http://engine.example:9010", "http://0.0.0.0:1"])
def test_plain_http_off_loopback_is_refused(url: str) -> None:
    with pytest.raises(EngineError, match="only to a loopback host"):
        HttpEngine.validate_config({"url": url})


@pytest.mark.parametrize("url", ["https://engine.example:9010", "http://127.0.0.1:9010", "http://[::1]:9010",
                                 "http://localhost:9010", "unix:/run/tachyon/engine.sock"])
def test_https_loopback_and_unix_urls_are_accepted(url: str) -> None:
    HttpEngine.validate_config({"url": url})


def test_token_env_and_token_file_together_are_refused() -> None:
    with pytest.raises(EngineError, match="not both"):
        HttpEngine.validate_config({"url": "https://e.example", "token_env": "X", "token_file": "/t"})


def _cert(tmp: Path) -> tuple[Path, Path, Path]:
    """A CA, and a certificate for 127.0.0.1 that it signed: (ca.pem, server.pem, server.key)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tachyon test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = tmp / "ca.pem", tmp / "server.pem", tmp / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


async def test_tls_server_with_a_pinned_ca_and_token_files(tmp_path: Path) -> None:
    ca, cert, key = _cert(tmp_path)
    (tmp_path / "token").write_text(TOKEN + "\n")
    doc = server_document(tmp_path / "engine-data", certfile=str(cert), keyfile=str(key),
                          token_file=str(tmp_path / "token"))
    del doc["server"]["token_env"]
    server = ServerProc(tmp_path, doc, token="")   # no token in the environment: it comes from the file
    await trio.to_thread.run_sync(server.start)
    try:
        assert server.url.startswith("https://127.0.0.1:")

        def engine(**extra: Any) -> HttpEngine:
            return HttpEngine(EngineContext("http", tmp_path, None, config={
                "url": server.url, "token_file": str(tmp_path / "token"), **extra}))

        with trio.fail_after(20):
            pinned = engine(cafile=str(ca))
            await pinned.start([ZEC])
            [rested] = await pinned.submit(order("t1", "sell", 100, 1))
            assert rested.kind == "rested" and pinned.epoch and pinned.feed_durable is True
            await pinned.aclose()
            unpinned = engine()   # the system CAs do not know this server's CA
            with pytest.raises(EngineUnavailable):
                await unpinned.start([ZEC])
            await unpinned.aclose()
    finally:
        server.kill()


def test_server_certfile_without_keyfile_is_refused(tmp_path: Path) -> None:
    from tachyond.config import ConfigError

    doc = server_document(tmp_path, certfile=str(tmp_path / "c.pem"))
    with pytest.raises(ConfigError, match="server.keyfile"):
        parse_config(doc)


async def test_the_client_speaks_over_a_unix_socket(tmp_path: Path) -> None:
    backend = ServerBackend(["ZEC/USDC"], data_dir=None)
    cfg = parse_config({**server_document(tmp_path, engine="memory"), "server": {"engine": "memory"}})
    hc = HypercornConfig()
    sock = tmp_path / "engine.sock"
    hc.bind = [f"unix:{sock}"]
    hc.accesslog = None
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(lambda task_status: serve(EngineApp(backend, cfg.markets, TOKEN), hc, mode="asgi",
                                                          task_status=task_status))
            client = HttpEngine(EngineContext("http", tmp_path, None, config={"url": f"unix:{sock}"}))
            with pytest.MonkeyPatch.context() as mp:
                mp.setenv("TACHYON_ENGINE_TOKEN", TOKEN)
                await client.start([ZEC])
            assert client.feed_durable is False and client.epoch == backend.epoch
            assert [e.kind for e in await client.submit(order("u1", "buy", 100, 1))] == ["rested"]
            await client.aclose()
            nursery.cancel_scope.cancel()


async def test_the_server_compacts_only_what_every_registered_daemon_acknowledged(tmp_path: Path) -> None:
    server = ServerProc(tmp_path, server_document(tmp_path / "engine-data"))
    await trio.to_thread.run_sync(server.start)
    try:
        def engine(client_id: str) -> HttpEngine:
            return HttpEngine(EngineContext("http", tmp_path, None, client_id=client_id, config={
                "url": server.url, "token_env": "TEST_ENGINE_TOKEN"}))

        with trio.fail_after(20), pytest.MonkeyPatch.context() as mp:
            mp.setenv("TEST_ENGINE_TOKEN", TOKEN)
            fast, slow = engine("wallet-fast"), engine("wallet-slow")
            await fast.start([ZEC])
            await slow.start([ZEC])
            for i in range(4):
                await fast.submit(order(f"c{i}", "sell", 100 + i, 1))
            await slow.compact(1)    # registered, has applied seq 1 only
            await fast.compact(4)    # applied everything: still, nothing past what slow needs goes
            assert [e.seq for e in await slow.events_after(1)] == [2, 3, 4]
            await slow.compact(3)
            assert [e.seq for e in await slow.events_after(3)] == [4]
            with pytest.raises(EngineError, match="gone"):
                await slow.events_after(1)
            # A newcomer reads the epoch and the current seq; the compacted history is no obstacle.
            late = engine("wallet-late")
            await late.start([ZEC])
            assert await late.last_seq() == 4 and late.epoch == fast.epoch
            for e in (fast, slow, late):
                await e.aclose()
    finally:
        server.kill()


async def test_events_older_than_the_retention_window_go_even_if_unacknowledged(tmp_path: Path) -> None:
    server = ServerProc(tmp_path, server_document(tmp_path / "engine-data", retention_s=0.5))
    await trio.to_thread.run_sync(server.start)
    try:
        def engine(client_id: str) -> HttpEngine:
            return HttpEngine(EngineContext("http", tmp_path, None, client_id=client_id, config={
                "url": server.url, "token_env": "TEST_ENGINE_TOKEN"}))

        with trio.fail_after(20), pytest.MonkeyPatch.context() as mp:
            mp.setenv("TEST_ENGINE_TOKEN", TOKEN)
            live, gone = engine("wallet-live"), engine("wallet-gone")
            await live.start([ZEC])
            await gone.start([ZEC])
            await gone.compact(0)   # registered, then never heard from again
            for i in range(3):
                await live.submit(order(f"r{i}", "sell", 100 + i, 1))
            await live.compact(3)
            assert [e.seq for e in await gone.events_after(0)] == [1, 2, 3]   # kept for the silent client
            await trio.sleep(0.6)   # the retention window itself passes
            await live.submit(order("r3", "sell", 110, 1))
            await live.compact(4)
            with pytest.raises(EngineError, match="gone"):
                await gone.events_after(0)
            for e in (live, gone):
                await e.aclose()
    finally:
        server.kill()
