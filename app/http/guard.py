"""The one SSRF policy: what Chorus may reach when a URL came from outside.

Webhook callbacks and endpoints, reference audio and the upstreams' audio links are all
written by someone other than the operator. ssrfguard checks such a URL as written (scheme,
credentials, port, literal addresses in every spelling: decimal, hex, octal, IPv4-mapped and
-compatible IPv6, NAT64…), resolves the name once, refuses it if any answer is loopback,
private, link-local, CGNAT, multicast, reserved or a metadata address, and connects to the
address it checked, so DNS cannot change its answer between the check and the connection.
A guarded session checks every redirect hop the same way.

``ALLOW_PRIVATE_URLS=true`` (on-premise and local use) lets the private ranges and any port
through; link-local and metadata addresses stay refused even then.

The upstream APIs the operator's catalog names are not checked here: the operator chose them.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable

import requests
import ssrfguard
from ssrfguard.requests import Session as GuardedSession

from config import Settings

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# What ALLOW_PRIVATE_URLS opens.
PRIVATE_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in ("127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "::1/128", "fc00::/7")
)
# Cloud metadata services that sit inside a private range; they stay out of reach even when
# private targets are allowed (ssrfguard's allow list beats its deny table, so they are cut
# out of the allowed ranges instead). 169.254.169.254 is link-local, never allowed.
METADATA = (ipaddress.ip_network("fd00:ec2::254/128"),)
# A callback URL is stored and shown back; longer than this is not a URL anyone means.
MAX_URL_LENGTH = 2048
POOL_SIZE = 32


def _without_metadata(networks: Iterable[IPNetwork]) -> tuple[IPNetwork, ...]:
    kept: list[IPNetwork] = []
    for network in networks:
        parts = [network]
        for hole in METADATA:
            parts = [
                piece
                for part in parts
                for piece in (
                    part.address_exclude(hole)  # type: ignore[arg-type]
                    if hole.version == part.version and hole.subnet_of(part)  # type: ignore[arg-type]
                    else [part]
                )
            ]
        kept.extend(parts)
    return tuple(kept)


ALLOWED_PRIVATE = _without_metadata(PRIVATE_NETWORKS)


def policy(settings: Settings) -> ssrfguard.Policy:
    if settings.allow_private_urls:
        return ssrfguard.Policy(
            allowed_networks=ALLOWED_PRIVATE, allowed_ports=frozenset(range(1, 65536))
        )
    return ssrfguard.Policy()


class RefusedURL(ValueError):
    """A URL Chorus will not call; the message says why, for the client."""


def check_written(
    url: str, settings: Settings, max_length: int | None = MAX_URL_LENGTH
) -> ssrfguard.Target:
    """Raise RefusedURL unless ``url`` as written may be called: its length, ASCII, scheme,
    credentials, port and any literal address. No name is resolved here.

    Every fetch path applies it before its guarded session, which parses a URL its own way (a
    bracketed name such as ``http://[example.com]/`` would otherwise be looked up)."""
    if max_length is not None and len(url) > max_length:
        raise RefusedURL(f"it is longer than {max_length} characters")
    if not url.isascii():
        # An internationalised host can imitate another; ask for its punycode form.
        raise RefusedURL("it must be ASCII (write an internationalised host in punycode)")
    try:
        return policy(settings).check_url(url)
    except ssrfguard.BlockedAddressError as exc:
        raise RefusedURL(f"it points to an address Chorus does not call ({exc.reason})") from exc
    except ssrfguard.SSRFGuardError as exc:
        raise RefusedURL(f"it is not allowed ({getattr(exc, 'reason', exc)})") from exc
    except (UnicodeError, ValueError) as exc:
        raise RefusedURL(f"it is not a valid URL ({exc})") from exc


def check(url: str, settings: Settings, resolver: ssrfguard.Resolver | None = None) -> None:
    """Raise RefusedURL unless ``url`` is a callback target Chorus may call now."""
    target = check_written(url, settings)
    guard = policy(settings)
    try:
        ssrfguard.resolve(target, policy=guard, resolver=resolver)
    except ssrfguard.BlockedAddressError as exc:
        raise RefusedURL(f"it points to an address Chorus does not call ({exc.reason})") from exc
    except ssrfguard.SSRFGuardError as exc:
        raise RefusedURL(f"it is not allowed ({getattr(exc, 'reason', exc)})") from exc
    except (OSError, UnicodeError, ValueError) as exc:
        # Fail closed: a name that does not resolve now cannot be checked now.
        if isinstance(exc, socket.gaierror):
            raise RefusedURL("its host name does not resolve") from exc
        raise RefusedURL(f"it is not a valid URL ({exc})") from exc


def session(
    settings: Settings,
    resolver: ssrfguard.Resolver | None = None,
    *,
    pool_maxsize: int = POOL_SIZE,
) -> requests.Session:
    """A pooled session that connects only to addresses the policy allows, hop by hop."""
    guarded: requests.Session = GuardedSession(
        policy=policy(settings), resolver=resolver, pool_connections=8, pool_maxsize=pool_maxsize
    )
    # Proxy variables would hand resolution to the proxy, out of the guard's reach.
    guarded.trust_env = False
    return guarded
