"""The address of the person behind a browser request, for `context.ip` (Meta CAPI needs it).

Segment fills `context.ip` from the request for client-side events only: a server-side library's
address is the shop's server, not the shopper. A browser sends an `Origin` header with every
POST, so that is what marks a client-side request here. The address is the TCP peer's, unless
the peer is one of `serve --trusted-proxies`: then `X-Forwarded-For` is read from the right,
skipping trusted hops, and the first address no trusted proxy owns is the client's.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

from starlette.requests import Request

from cohortsync.events.models import Message

Address = IPv4Address | IPv6Address
TrustedProxies = tuple[IPv4Network | IPv6Network, ...]


def parse_trusted_proxies(text: str) -> TrustedProxies:
    """Comma-separated CIDRs or addresses (`10.0.0.0/8,127.0.0.1`); ValueError names a bad one."""
    networks = []
    for part in text.split(","):
        entry = part.strip()
        if not entry:
            continue
        try:
            networks.append(ip_network(entry, strict=False))
        except ValueError:
            raise ValueError(
                f"--trusted-proxies: {entry!r} is not an address or CIDR such as 10.0.0.0/8"
            ) from None
    return tuple(networks)


def client_address(
    peer: str | None, forwarded_for: Iterable[str], trusted: TrustedProxies
) -> str | None:
    """The client's address: the peer's, or what trusted proxies say they forwarded."""
    client = _address(peer) if peer else None
    if client is None or not _is_trusted(client, trusted):
        return str(client) if client is not None else None
    hops = [hop.strip() for value in forwarded_for for hop in value.split(",")]
    for hop in reversed(hops):
        address = _address(hop)
        if address is None:
            break  # a garbled hop: nothing left of it can be believed
        client = address
        if not _is_trusted(address, trusted):
            break
    return str(client)


def request_client_ip(request: Request, trusted: TrustedProxies) -> str | None:
    """The address to put in `context.ip` for a browser request; None for other requests."""
    if "origin" not in request.headers:
        return None
    peer = request.client.host if request.client else None
    return client_address(peer, request.headers.getlist("x-forwarded-for"), trusted)


def with_client_ip(messages: Sequence[Message], ip: str | None) -> list[Message]:
    """The messages with `context.ip` set to `ip` where they carry none of their own."""
    if ip is None:
        return list(messages)
    return [
        m
        if m.context and m.context.get("ip")
        else m._replace(context={**(m.context or {}), "ip": ip})
        for m in messages
    ]


def _address(text: str) -> Address | None:
    """An address, also as proxies write it with a port (`1.2.3.4:80`, `[::1]:80`)."""
    candidate = text.strip()
    if candidate.startswith("["):
        candidate = candidate[1:].partition("]")[0]
    elif candidate.count(":") == 1:
        candidate = candidate.partition(":")[0]
    try:
        return ip_address(candidate)
    except ValueError:
        return None


def _is_trusted(address: Address, trusted: TrustedProxies) -> bool:
    mapped = address.ipv4_mapped if isinstance(address, IPv6Address) else None
    return any(address in net or (mapped is not None and mapped in net) for net in trusted)
