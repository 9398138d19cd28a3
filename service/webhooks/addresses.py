"""Which webhook URLs the service calls (SSRF): http(s) only (checked by the schema), and
hosts on the public internet unless the operator allows private ones
(``GIF_WEBHOOK_ALLOW_PRIVATE``).

Checked twice: at submission on the URL as written (a literal address, ``localhost``), and
before every attempt on every address the host resolves to then. A name that resolves to a
public address at the check and to a private one at the connection (DNS rebinding within the
resolver's cache time) is not caught; deployments that must exclude that route deliveries
through an egress proxy."""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

LOCAL_NAMES = ("localhost", "localhost.localdomain")


class AddressRefused(ValueError):
    """The URL names a host the service may not call."""


def _refuse_address(host: str, address: str) -> None:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if not ip.is_global or ip.is_multicast:
        raise AddressRefused(
            f"webhook host {host!r} is a private, loopback, link-local or reserved address "
            f"({ip}); the operator can allow these with GIF_WEBHOOK_ALLOW_PRIVATE"
        )


def check_written(url: str, allow_private: bool) -> None:
    """Refuse a URL whose host, as written, is a non-public address (no DNS lookup: a
    submission stays fast)."""
    if allow_private:
        return
    host = (urlsplit(url).hostname or "").rstrip(".").lower()
    if host in LOCAL_NAMES or host.endswith(".localhost"):
        raise AddressRefused(f"webhook host {host!r} is this machine; the operator can allow "
                             "it with GIF_WEBHOOK_ALLOW_PRIVATE")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return  # a name: checked at delivery, on what it resolves to
    _refuse_address(host, host)


def check_resolved(url: str, allow_private: bool) -> None:
    """Refuse a URL whose host resolves to any non-public address (before an attempt)."""
    check_written(url, allow_private)
    if allow_private:
        return
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        infos = socket.getaddrinfo(host, parts.port or 443, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise AddressRefused(f"webhook host {host!r} does not resolve: {err}") from None
    for info in infos:
        _refuse_address(host, str(info[4][0]))
