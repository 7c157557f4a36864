"""Logging to stderr as text or JSON lines, with every known secret value scrubbed from each record."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time

REDACTED = "[redacted]"
MIN_SECRET_CHARS = 4
# The redaction set holds keyed digests by length, never the secrets: after `wallet lock` the process
# keeps no copy of the wallet password for a memory dump to find. The key is per process.
_DIGEST_KEY = os.urandom(32)
_DIGESTS: dict[int, set[bytes]] = {}


def _digest(value: str) -> bytes:
    return hashlib.blake2b(value.encode("utf-8", "surrogatepass"), key=_DIGEST_KEY, digest_size=16).digest()


def add_secret(value: str | bytes | None) -> None:
    """Register a secret that must never reach a log line: only ones configured or verified (a password
    that unlocked the wallet), never a value a caller merely sent, or any socket user could blank lines."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if value and len(value) >= MIN_SECRET_CHARS:
        _DIGESTS.setdefault(len(value), set()).add(_digest(value))


def is_redacted(value: str) -> bool:
    """Whether ``value`` is in the redaction set."""
    return _digest(value) in _DIGESTS.get(len(value), ())


def scrub(text: str) -> str:
    """``text`` with every registered secret replaced by [redacted] (each window of each secret length is
    compared by digest: a few hundred hashes for a log line)."""
    spans: list[tuple[int, int]] = []
    for length, digests in _DIGESTS.items():
        for start in range(len(text) - length + 1):
            if _digest(text[start:start + length]) in digests:
                spans.append((start, start + length))
    if not spans:
        return text
    spans.sort()
    out, pos = [], 0
    for start, end in spans:
        if end <= pos:
            continue
        out.append(text[pos:max(pos, start)])
        out.append(REDACTED if start >= pos else "")
        pos = end
    out.append(text[pos:])
    return "".join(out)


class ScrubFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if _DIGESTS:
            record.msg = scrub(record.getMessage())
            record.args = None
            if record.exc_info and not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            if record.exc_text:
                record.exc_text = scrub(record.exc_text)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
               "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage()}
        if record.exc_info or record.exc_text:
            doc["exc"] = record.exc_text or self.formatException(record.exc_info)  # type: ignore[arg-type]  # exc_info is set: checked by the if above
        return json.dumps(doc)


def setup(level: str = "info", fmt: str = "text") -> None:
    """Configure the root logger once (again on SIGHUP): stderr, the chosen format, secrets scrubbed."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close()
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ScrubFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        f = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S")
        f.converter = time.gmtime
        handler.setFormatter(f)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in ("hpack", "httpx", "httpcore", "stripe", "quart.serving"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
