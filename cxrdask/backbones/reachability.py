"""Whether the servers published weights come from can be reached, asked once on the
client before any worker starts a download: offline, a run is refused at once instead of
every worker timing out."""

from __future__ import annotations

import socket

# How long the check before a run waits for the weights' download server.
REACHABILITY_TIMEOUT_S = 5.0
HUB_HOST = "huggingface.co"  # where timm's and transformers' published weights come from


def unreachable(host: str) -> OSError | None:
    """Why ``host``'s HTTPS port cannot be reached within :data:`REACHABILITY_TIMEOUT_S`
    (None when it can): where weights come from, asked before any worker downloads."""
    try:
        socket.create_connection((host, 443), timeout=REACHABILITY_TIMEOUT_S).close()
    except OSError as exc:
        return exc
    return None


__all__ = ["HUB_HOST", "REACHABILITY_TIMEOUT_S", "unreachable"]
