"""Telling quickly whether weights can be downloaded, so offline users get an answer, not a hang."""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator

_cache: dict[str, tuple[float, bool]] = {}
_CACHE_SECONDS = 60.0


def host_reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    """True when a TCP connection to host:port opens within `timeout` seconds (cached 60 s)."""
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("FREEZER_OFFLINE") == "1":
        return False
    now = time.monotonic()
    cached = _cache.get(host)
    if cached and now - cached[0] < _CACHE_SECONDS:
        return cached[1]
    try:
        with socket.create_connection((host, port), timeout=timeout):
            ok = True
    except OSError:
        ok = False
    _cache[host] = (now, ok)
    return ok


@contextlib.contextmanager
def download_guard(online: bool, socket_timeout: float = 30.0) -> Iterator[None]:
    """Bound every socket operation during a download; when offline, make the Hugging Face
    hub answer from its cache at once instead of retrying for a minute."""
    from huggingface_hub import constants

    old_timeout = socket.getdefaulttimeout()
    old_offline = constants.HF_HUB_OFFLINE
    socket.setdefaulttimeout(socket_timeout)
    if not online:
        constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        socket.setdefaulttimeout(old_timeout)
        constants.HF_HUB_OFFLINE = old_offline
