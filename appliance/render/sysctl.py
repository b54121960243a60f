"""Kernel settings a DMVPN router needs, as sysctl keys and as /etc/sysctl.d/90-appliance.conf."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .spec import RenderedFile

if TYPE_CHECKING:  # the schema is pydantic: typing only (see render/__init__.py)
    from ..model.schema import Site

SYSCTL_PATH = "/etc/sysctl.d/90-appliance.conf"


def interface_key(ifname: str, setting: str) -> str:
    """net.ipv4.conf.<ifname>.<setting>; a dot inside an interface name is written as '/'."""
    return f"net.ipv4.conf.{ifname.replace('.', '/')}.{setting}"


def render_sysctl(site: Site) -> dict[str, str]:
    """Keys -> values. Per-tunnel keys exist only once the tunnel does (apply them after netlink)."""
    tunnel = site.dmvpn.tunnel.name
    keys = {
        "net.ipv4.ip_forward": "1",
        # Measured in the lab recipe: PMTU from the route, not from ICMP the forwarder received.
        "net.ipv4.ip_forward_use_pmtu": "0",
        # rp_filter uses max(all, iface): asymmetric paths while a shortcut replaces the hub path.
        "net.ipv4.conf.all.rp_filter": "0",
        "net.ipv4.conf.default.rp_filter": "0",
        interface_key(tunnel, "rp_filter"): "0",
        # send_redirects is OR(all, iface): the hub hairpins spoke traffic; NHRP redirects, not ICMP.
        "net.ipv4.conf.all.send_redirects": "0",
        interface_key(tunnel, "send_redirects"): "0",
        # The appliance routes IPv4 only; frr.conf says 'no ipv6 forwarding' to match.
        "net.ipv6.conf.all.forwarding": "0",
    }
    return dict(sorted(keys.items()))


def render_sysctl_file(site: Site, keys: dict[str, str]) -> RenderedFile:
    tunnel_prefix = interface_key(site.dmvpn.tunnel.name, "")
    lines = ["# Written by appliance from the site file; changes here are overwritten."]
    for key, value in keys.items():
        # '-': the tunnel does not exist yet at early boot; udev applies the key when it appears.
        lines.append(f"{'-' if key.startswith(tunnel_prefix) else ''}{key} = {value}")
    return RenderedFile(path=SYSCTL_PATH, content="\n".join(lines) + "\n")
