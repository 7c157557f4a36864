"""Decode Stripe's form encoding (``a[b][c]=v``, ``x[0]=v``, ``x[]=v``) into nested dicts and lists."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl

_KEY_RE = re.compile(r"([^\[\]]+)((?:\[[^\[\]]*\])*)")
_PART_RE = re.compile(r"\[([^\[\]]*)\]")


class FormError(ValueError):
    """A key that cannot be placed: malformed brackets or a scalar and a hash under one name."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


def decode_form(body: str | bytes) -> dict[str, Any]:
    """Parse an ``application/x-www-form-urlencoded`` body (or query string) the way Stripe's API does."""
    text = body.decode("utf-8") if isinstance(body, (bytes, bytearray)) else body
    root: dict[str, Any] = {}
    for key, value in parse_qsl(text, keep_blank_values=True, strict_parsing=False):
        match = _KEY_RE.fullmatch(key)
        if not match:
            raise FormError(key, f"Invalid parameter name: {key}")
        path = [match.group(1)] + _PART_RE.findall(match.group(2))
        node: dict[str, Any] = root
        for depth, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise FormError(key, f"Invalid hash: {'['.join(path[:depth + 1])} is both a value and a hash")
            if path[depth + 1] == "":
                # x[]=v appends, as Rails-style encoders (curl, JS URLSearchParams users) send it.
                path[depth + 1] = str(len(child))
            node = child
        last = path[-1]
        if isinstance(node.get(last), dict):
            raise FormError(key, f"Invalid hash: {key} is both a value and a hash")
        node[last] = value
    return _listify(root)


def _listify(node: Any) -> Any:
    """Turn hashes whose keys are all 0..n-1 into lists, recursively (``x[0]``, ``x[1]`` -> list)."""
    if not isinstance(node, dict):
        return node
    converted = {k: _listify(v) for k, v in node.items()}
    if converted and all(k.isdigit() for k in converted):
        indexes = sorted(int(k) for k in converted)
        if indexes == list(range(len(indexes))):
            return [converted[str(i)] for i in indexes]
    return converted
