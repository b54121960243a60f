"""Links, addresses and routes the kernel holds: the mGRE tunnel, MTUs, the default route.

Static routes from routing.static live in FRR's staticd (one way to do each thing); connected
routes follow from the addresses; NHRP maps are nhrpd's ('ip nhrp nhs ... nbma ...').
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .spec import Address, LinkSettings, NetlinkSpec, Route, TunnelLink

if TYPE_CHECKING:  # the schema is pydantic: typing only (see render/__init__.py)
    from ..model.schema import Site

TUNNEL_TTL = 64  # fixed, as in the lab recipe: a tunnel sets DF (PMTU discovery) only with a fixed TTL


def render_netlink(site: Site) -> NetlinkSpec:
    public = site.interfaces.public
    t = site.dmvpn.tunnel
    tunnel = TunnelLink(
        name=t.name,
        local=str(public.address.ip) if public.address is not None else None,
        link=site.tunnel_source,
        key=t.key,
        ttl=TUNNEL_TTL,
        mtu=t.mtu,
        address=f"{t.address}/32",
    )
    links = [LinkSettings(name=public.name, mtu=public.mtu)]
    links += [LinkSettings(name=lan.name, mtu=lan.mtu) for lan in site.interfaces.lan]
    addresses = []
    if public.address is not None and not public.dhcp:
        addresses.append(Address(ifname=public.name, address=str(public.address)))
    addresses += [Address(ifname=lan.name, address=str(lan.address)) for lan in site.interfaces.lan]
    routes = []
    if public.gateway is not None:
        routes.append(Route(dst="0.0.0.0/0", gateway=str(public.gateway), ifname=public.name))
    return NetlinkSpec(tunnel=tunnel, links=tuple(links), addresses=tuple(addresses), routes=tuple(routes))
