"""Client addresses and allow-lists: one spelling of an address, one strict parser, one membership test."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from settings import ConfigError

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def client_ip(address: str | None) -> Address | None:
    """Return `address` parsed, an IPv4-mapped IPv6 one (`::ffff:a.b.c.d`) as IPv4; None if not an address.

    One caller, one spelling: Rehive's IP rules, our auth cache key and our allow-lists all see `a.b.c.d`
    however it arrived.
    """
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return None
    mapped = getattr(ip, "ipv4_mapped", None)
    return mapped or ip


def in_networks(address: str | None, networks: Iterable[Network]) -> bool:
    """Tell whether `address` (after ProxyFix: the client's) is in one of `networks`."""
    ip = client_ip(address)
    return ip is not None and any(ip in network for network in networks)


def parse_networks(entries: Iterable[str], name: str = "WEBHOOK_ALLOWED_IPS") -> tuple[Network, ...]:
    """Parse an allow-list setting's entries (addresses or CIDR ranges), naming every bad one.

    Strictly: `34.91.230.165/0` (host bits set) would silently allow everyone, so it is refused.
    """
    networks, bad = [], []
    for entry in sorted(entries):
        try:
            networks.append(ipaddress.ip_network(entry, strict=True))
        except ValueError as exc:
            bad.append(f"{entry} (host bits set)" if "host bits set" in str(exc) else entry)
    if bad:
        raise ConfigError(f"Cannot start: {name} has invalid addresses: {', '.join(bad)}.")
    return tuple(networks)
