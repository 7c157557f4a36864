"""Shared test helpers: short socket dirs, config files, and real tachyond subprocesses."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from tachyon_ctl.client import Client, DaemonNotRunning

ROOT = Path(__file__).resolve().parent.parent
# The test modules import helpers from each other across the folders that mirror the packages
# (test_dex_helpers, test_http_engine, test_onramp, ...): each folder is on sys.path, as the flat tests/ was.
for _folder in sorted(Path(__file__).resolve().parent.iterdir()):
    if _folder.is_dir() and any(_folder.glob("test_*.py")) and str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))
PLUGIN_SITE = Path(__file__).resolve().parent / "fixtures" / "plugin_site"
IN_CI = os.environ.get("CI") == "true"


def require_tool(name: str) -> str:
    """The path of a tool a test needs: in CI a missing tool fails the test; elsewhere it skips with why."""
    path = shutil.which(name)
    if path:
        return path
    if IN_CI:
        pytest.fail(f"{name} is required in CI (.ci/run installs it)")
    pytest.skip(f"{name} is not installed here (.ci/run installs it)")


def require_root() -> None:
    """Tests that drop to another uid need root: CI runs as root, so there a non-root run fails, never skips."""
    if os.geteuid() == 0:
        return
    if IN_CI:
        pytest.fail("this test drops to another uid and needs root; CI runs as root")
    pytest.skip("dropping to another uid needs root (CI runs as root)")


def mount_small_tmpfs(mnt: Path, size: str = "4m") -> None:
    """A small filesystem the test fills up (a full disk): a tmpfs of ``size`` at ``mnt`` (made here); root only.
    Unmount with ``umount_small_tmpfs``."""
    require_root()
    mnt.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    assert r.returncode == 0, f"mount -t tmpfs: {r.stderr}"


def umount_small_tmpfs(mnt: Path) -> None:
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill_disk(path: Path) -> None:
    """Write ``path`` until the filesystem under it is full (ENOSPC), down to the last byte."""
    import errno

    with open(path, "wb", buffering=0) as f:
        for size in (1 << 16, 1 << 12, 1 << 9, 1):
            while True:
                try:
                    f.write(b"\0" * size)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
                    break


@pytest.fixture
def small_fs(sockdir: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs for a test about a full disk (root only; CI runs as root)."""
    mnt = sockdir / "fs"
    mount_small_tmpfs(mnt)
    yield mnt
    umount_small_tmpfs(mnt)


@pytest.fixture
def sockdir() -> Iterator[Path]:
    """A short directory for Unix sockets (paths are limited to 108 bytes)."""
    d = Path(tempfile.mkdtemp(prefix="ty-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def base_document(dir_: Path, **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "daemon": {"data_dir": str(dir_ / "data"), "socket": str(dir_ / "rpc.sock"), "log_level": "debug"},
        "http": {"listen": ["127.0.0.1:0"]},
    }
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(doc.get(key), dict):
            doc[key] = {**doc[key], **value}
        else:
            doc[key] = value
    return doc


def write_config(dir_: Path, doc: dict[str, Any]) -> Path:
    path = dir_ / "tachyond.toml"
    path.write_text(tomli_w.dumps(doc))
    return path


class DaemonProc:
    """A real ``tachyond`` process on a config file, with a client for its socket."""

    def __init__(self, dir_: Path, doc: dict[str, Any], *, env: dict[str, str] | None = None,
                 test_plugin: bool = False, args: list[str] | None = None, cwd: Path | None = None):
        self.dir = dir_
        self.doc = doc
        self.socket = doc["daemon"]["socket"] if doc else str(dir_ / ".tachyon-dev" / "rpc.sock")
        self.config_path = write_config(dir_, doc) if doc else None
        self.env = dict(os.environ)
        self.env.pop("NOTIFY_SOCKET", None)
        self.env.pop("WATCHDOG_USEC", None)
        self.env.pop("TACHYON_DISABLED_PLUGINS", None)
        # scrypt at the default N=2**17 costs ~0.4-1.3 s per create/unlock here; the suite's daemons use 2**10
        # (tests/wallet/test_wallet_kdf.py shows the default on a daemon started without it).
        self.env.setdefault("TACHYOND_INSECURE_TEST_SCRYPT_N", "1024")
        if test_plugin:
            self.env["PYTHONPATH"] = os.pathsep.join([str(PLUGIN_SITE), self.env.get("PYTHONPATH", "")]).rstrip(
                os.pathsep
            )
        self.env.update(env or {})
        self.args = args if args is not None else ["--config", str(self.config_path)]
        self.cwd = cwd or dir_
        self.proc: subprocess.Popen[bytes] | None = None
        self.stderr_path = dir_ / "tachyond.stderr"
        self.stdout_path = dir_ / "tachyond.stdout"

    def start(self, *, wait: bool = True, timeout_s: float = 30) -> DaemonProc:
        self._stderr = open(self.stderr_path, "ab")
        self._stdout = open(self.stdout_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "tachyond", *self.args], cwd=self.cwd, env=self.env,
                                     stdout=self._stdout, stderr=self._stderr, stdin=subprocess.DEVNULL)
        if wait:
            self.wait_ready(timeout_s)
        return self

    def wait_ready(self, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"tachyond exited with {self.proc.returncode}:\n{self.stderr()}")
            try:
                with Client(self.socket, timeout_s=5) as c:
                    c.call("daemon.info")
                    return
            except (DaemonNotRunning, OSError):
                time.sleep(0.05)
        raise AssertionError(f"tachyond did not answer within {timeout_s}s:\n{self.stderr()}")

    def stdout(self) -> str:
        try:
            return self.stdout_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def client(self, **kw: Any) -> Client:
        c = Client(self.socket, **kw)
        c.connect()
        return c

    def call(self, method: str, params: Any = None) -> Any:
        with Client(self.socket) as c:
            return c.call(method, params)

    def raw(self, payload: bytes, *, timeout_s: float = 10) -> bytes:
        """Send raw bytes, read one line back (b"" when the daemon sends nothing and closes or times out)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout_s)
            s.connect(self.socket)
            s.sendall(payload)
            buf = b""
            try:
                while b"\n" not in buf:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
            except TimeoutError:
                pass
            return buf

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout_s: float = 30) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout_s)

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture
def daemon_factory(sockdir: Path) -> Iterator[Any]:
    """Make real tachyond processes in a short temp dir; all are stopped at teardown."""
    procs: list[DaemonProc] = []

    def make(doc: dict[str, Any] | None = None, **kw: Any) -> DaemonProc:
        d = DaemonProc(sockdir, doc if doc is not None else base_document(sockdir), **kw)
        procs.append(d)
        return d

    yield make
    for p in procs:
        p.kill()
        for fh in (getattr(p, "_stderr", None), getattr(p, "_stdout", None)):
            if fh is not None:
                fh.close()


def run_ctl(*args: str, socket_path: str | None = None, input_text: str | None = None,
            env: dict[str, str] | None = None, timeout_s: float = 30) -> subprocess.CompletedProcess[str]:
    """Run the real ``tachyon-ctl`` (as a subprocess) and capture its output."""
    e = dict(os.environ)
    e.update(env or {})
    cmd = [sys.executable, "-m", "tachyon_ctl"]
    if socket_path:
        cmd += ["--socket", socket_path]
    return subprocess.run(cmd + list(args), input=input_text, capture_output=True, text=True, env=e, timeout=timeout_s)


def ctl_json(*args: str, **kw: Any) -> Any:
    r = run_ctl("--json", *args, **kw)
    assert r.returncode == 0, f"tachyon-ctl {' '.join(args)} exited {r.returncode}: {r.stderr}"
    return json.loads(r.stdout)


def self_signed_cert(dir_: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 that may also be pinned as its own CA: (cert.pem, key.pem)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = dir_ / "cert.pem", dir_ / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path
