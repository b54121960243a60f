"""Desired state of each subsystem: plain, immutable data produced by the renderers.

This is the contract between `render/` (pure: model -> spec) and `drivers/` (observe, diff,
apply). Drivers read these types and nothing from `model/`; renderers build them and never
touch the system.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RenderedFile:
    """A file as it lives on a real box. `secret` files are written 0600 and never printed."""

    path: str  # absolute path on the box, e.g. /etc/frr/frr.conf
    content: str = field(repr=False)  # may hold secrets: never in a repr (tracebacks, logs)
    mode: int = 0o644
    owner: str = "root"
    group: str = "root"
    secret: bool = False


# --- netlink ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TunnelLink:
    """The mGRE tunnel: no remote, optional key, /32 address (nhrpd refuses anything else)."""

    name: str
    local: str | None  # own NBMA address; None with DHCP on the public interface
    link: str  # the underlay interface the tunnel is bound to
    key: int | None
    ttl: int
    mtu: int
    address: str  # "172.16.0.1/32"


@dataclass(frozen=True)
class LinkSettings:
    """An existing interface the appliance configures but never creates or deletes."""

    name: str
    mtu: int | None = None
    up: bool = True


@dataclass(frozen=True)
class Address:
    ifname: str
    address: str  # CIDR, e.g. "10.0.0.1/24"


@dataclass(frozen=True)
class Route:
    dst: str  # CIDR; "0.0.0.0/0" for the default route
    gateway: str | None = None
    ifname: str | None = None
    kind: str = "unicast"  # "unicast" | "blackhole"
    metric: int | None = None


@dataclass(frozen=True)
class Neighbour:
    """A static NHRP-style map on the tunnel: overlay address -> NBMA address."""

    ifname: str
    dst: str
    lladdr: str


@dataclass(frozen=True)
class NetlinkSpec:
    tunnel: TunnelLink
    links: tuple[LinkSettings, ...] = ()
    addresses: tuple[Address, ...] = ()  # excludes the tunnel's own /32 (see TunnelLink.address)
    routes: tuple[Route, ...] = ()
    neighbours: tuple[Neighbour, ...] = ()


# --- ipsec ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SharedSecret:
    """A VICI load_shared message: {'id': ..., 'type': 'IKE', 'data': <secret>, 'owners': [...]}."""

    id: str
    type: str
    data: str = field(repr=False)
    owners: tuple[str, ...] = ()


@dataclass(frozen=True)
class CredentialFile:
    """A certificate or key that VICI load_cert / load_key loads (PEM file on the box)."""

    kind: str  # "x509" | "x509ca" | "private"
    path: str  # where the PEM lives on the box (the driver reads it at apply time)
    key_type: str | None = None  # for private keys: "rsa" | "ecdsa" | "any"
    # Where the site file names it (relative paths are relative to the site file); the driver
    # installs it at `path` (0600 for "private") so that `swanctl --load-all` finds it after a reboot.
    source: str | None = None


@dataclass(frozen=True)
class IpsecSpec:
    # VICI load_conn payloads: {connection name: its dict}, exactly what vici.Session.load_conn takes
    connections: dict[str, dict[str, Any]]
    secrets: tuple[SharedSecret, ...] = ()
    credentials: tuple[CredentialFile, ...] = ()


# --- frr, vrrp, firewall, sysctl --------------------------------------------------------------


@dataclass(frozen=True)
class FrrSpec:
    config: str = field(repr=False)  # frr.conf in FRR's canonical 'show running-config' form (holds keys)
    daemons: frozenset[str]  # e.g. {"zebra", "staticd", "nhrpd", "ospfd"}


@dataclass(frozen=True)
class VrrpSpec:
    config: str | None  # keepalived.conf; None when the site has no VRRP group
    tunnel_check: str | None = None  # the tunnel check script (`appliance check-tunnel` runs it too)
    track_tunnel: bool = False  # a group tracks the tunnel: keepalived runs the script


@dataclass(frozen=True)
class FirewallSpec:
    table: str  # "appliance" (family inet)
    batch: dict[str, Any]  # python-nftables JSON: {"nftables": [...]} replacing the table atomically


@dataclass(frozen=True)
class DesiredState:
    hostname: str
    sysctl: dict[str, str]
    netlink: NetlinkSpec
    firewall: FirewallSpec
    ipsec: IpsecSpec
    frr: FrrSpec
    vrrp: VrrpSpec
    files: tuple[RenderedFile, ...]  # every artefact as it lives on a box (render --root-dir)
    secrets: frozenset[str] = field(default=frozenset(), repr=False)  # values to redact anywhere
    role: str = "spoke"  # "hub" | "spoke": what health means for this box (supervisor, show health)
