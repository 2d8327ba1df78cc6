"""Allow-list entries as operators write them: ``HOST`` or ``HOST:PORT`` (``[v6]:PORT``).

Shared by every setting that lists hosts the server may reach (``--webhook-allow-host``,
``--input-allow-host``); what an entry without a port allows is each list's own rule.
Standard library only: settings are checked in rank processes too.
"""

from __future__ import annotations

from urllib.parse import urlsplit


def parse_host(entry: str, setting: str) -> tuple[str, int | None]:
    """``HOST`` or ``HOST:PORT`` as (host, port or None); the host lower-cased, an IPv6
    literal without its brackets. A ValueError names ``setting`` and the entry."""
    refused = ValueError(f"{setting}: {entry!r} is not HOST or HOST:PORT")
    if entry.endswith(":") or any(char in "/?#@" or char.isspace() for char in entry):
        raise refused
    try:
        parts = urlsplit(f"//{entry}")
        host, port = parts.hostname, parts.port
    except ValueError:
        raise refused from None
    if not host or port == 0:
        raise refused
    return host, port
