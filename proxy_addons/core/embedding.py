"""IPv4 addresses carried inside IPv6 addresses, so a listed IPv4 cannot hide in one.

A connection to ``[2002:c633:6407::]`` (6to4), ``[64:ff9b::c633:6407]`` (NAT64) or
``[::198.51.100.7]`` (IPv4-compatible) reaches 198.51.100.7 through a relay or
translator; a Teredo address reaches its client's (obfuscated) IPv4, and an ISATAP
address (``...:0:5efe:a.b.c.d``) the IPv4 in its interface identifier. The engine
checks each carried IPv4 as if the client had named it.

IPv4-mapped (``::ffff:a.b.c.d``) and the well-known NAT64 /96 are already turned
into the IPv4 by canonicalization (``canon``); they are handled here too so this
module answers for every form on its own.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Final

# RFC 6052 2.2: the prefix lengths a NAT64 translator may use, and where the IPv4 sits.
NAT64_PREFIX_LENGTHS: Final = (32, 40, 48, 56, 64, 96)
WELL_KNOWN_NAT64: Final = ipaddress.IPv6Network("64:ff9b::/96")
# RFC 8215: the local-use NAT64 block; operators pick a prefix length inside it, so
# every RFC 6052 length from /48 on is read (over-reading only ever blocks more).
LOCAL_NAT64: Final = ipaddress.IPv6Network("64:ff9b:1::/48")
SIX_TO_FOUR: Final = ipaddress.IPv6Network("2002::/16")
TEREDO: Final = ipaddress.IPv6Network("2001::/32")
IPV4_COMPATIBLE: Final = ipaddress.IPv6Network("::/96")
# RFC 5214: an ISATAP interface identifier is 0000:5efe or 0200:5efe, then the IPv4.
_ISATAP_IDS: Final = (b"\x00\x00\x5e\xfe", b"\x02\x00\x5e\xfe")


def parse_nat64_prefix(text: str) -> ipaddress.IPv6Network:
    """A configured NAT64 prefix (``2001:db8:64::/96``); raises ``ValueError``."""
    net = ipaddress.IPv6Network(text.strip(), strict=True)
    if net.prefixlen not in NAT64_PREFIX_LENGTHS:
        raise ValueError(
            f"a NAT64 prefix must be /32, /40, /48, /56, /64 or /96 (RFC 6052), got {text!r}"
        )
    return net


def _rfc6052(packed: bytes, prefixlen: int) -> ipaddress.IPv4Address:
    """The IPv4 address after a NAT64 prefix of ``prefixlen`` bits (bits 64-71 are skipped)."""
    out = bytearray()
    i = prefixlen // 8
    while len(out) < 4:
        if i != 8:
            out.append(packed[i])
        i += 1
    return ipaddress.IPv4Address(bytes(out))


def carried_ipv4(
    ip: ipaddress.IPv6Address, nat64: Iterable[ipaddress.IPv6Network] = ()
) -> tuple[ipaddress.IPv4Address, ...]:
    """Every IPv4 address ``ip`` carries (empty for an ordinary IPv6 address)."""
    if ip.ipv4_mapped is not None:
        return (ip.ipv4_mapped,)
    packed = ip.packed
    found: list[ipaddress.IPv4Address] = []
    if ip in WELL_KNOWN_NAT64:
        found.append(_rfc6052(packed, 96))
    elif ip in LOCAL_NAT64:
        found += (_rfc6052(packed, n) for n in NAT64_PREFIX_LENGTHS if n >= 48)
    elif ip in SIX_TO_FOUR:
        found.append(ipaddress.IPv4Address(packed[2:6]))
    elif ip in TEREDO:
        teredo = ip.teredo
        if teredo is not None:
            found.append(teredo[1])  # the client's own address (stored XOR 0xffffffff)
    elif ip in IPV4_COMPATIBLE:
        v4 = ipaddress.IPv4Address(packed[12:])
        if int(v4) >> 24:  # not ::, ::1 or another address inside 0.0.0.0/8
            found.append(v4)
    if packed[8:12] in _ISATAP_IDS:
        found.append(ipaddress.IPv4Address(packed[12:]))
    for net in nat64:
        if ip in net:
            found.append(_rfc6052(packed, net.prefixlen))
    return tuple(dict.fromkeys(found))


__all__ = ["carried_ipv4", "parse_nat64_prefix"]
