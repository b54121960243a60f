"""frr.conf for zebra, staticd, nhrpd, ospfd, bgpd (and eigrpd), in FRR 8.4's canonical form.

The text is what `show running-config` prints after loading it, minus the lines frr-reload.py
ignores ('frr version', 'end'), so that a second apply sees an empty delta.
Measured on FRR 8.4.4 (Debian 12); the live test in tests/unit/test_render_frr_live.py checks it:
- blocks: global lines, '!', static routes, '!', interfaces (by name), router eigrp, bgp, ospf;
- lines inside an interface block are sorted (vtysh merges the daemons' lines sorted);
- lines equal to a default are omitted by FRR, so we omit them too: 'ip nhrp holdtime 7200',
  'ip ospf hello-interval 10', 'ip ospf priority 1', and 'ip ospf network broadcast' (an mGRE
  link is neither point-to-point nor loopback, so broadcast is ospfd's default for it);
- 'hostname <system.hostname>': FRR 8.4 prints the hostname its daemons read from the kernel when
  they started, and a 'hostname' command changes only vtysh's prompt, never that line; without
  it in the file frr-reload's delta keeps 'no hostname X' forever. The system driver sets the
  kernel hostname before FRR starts; FRR must be restarted when the hostname changes;
- 'no ipv6 forwarding' is printed from the kernel state; sysctl.py pins IPv6 forwarding off.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from typing import TYPE_CHECKING

from .jinja import template
from .spec import FrrSpec, RenderedFile

if TYPE_CHECKING:  # the schema is pydantic: typing only (see render/__init__.py)
    from ..model.schema import Bgp, Eigrp, Ospf, Site

FRR_CONF_PATH = "/etc/frr/frr.conf"
DAEMONS_PATH = "/etc/frr/daemons"
VTYSH_CONF_PATH = "/etc/frr/vtysh.conf"

NFLOG_REDIRECT_GROUP = 1  # firewall.py logs hub tunnel-to-tunnel forwards here (phase 3)
NFLOG_MULTICAST_GROUP = 2  # firewall.py logs link-local multicast leaving the tunnel here
BGP_SPOKES_PEER_GROUP = "SPOKES"

NHRP_HOLDTIME_DEFAULT = 7200
OSPF_HELLO_DEFAULT = 10
OSPF_PRIORITY_DEFAULT = 1
# Phase 2 runs OSPF broadcast on the tunnel so that routes keep the spoke's own next hop
# (a DR does not rewrite it); the hub must be the DR and spokes must never become DR/BDR.
OSPF_PHASE2_HUB_PRIORITY = 255
OSPF_PHASE2_SPOKE_PRIORITY = 0


def frr_daemons(site: Site) -> frozenset[str]:
    """The FRR daemons this site needs (zebra and staticd always: the hub's blackhole is static)."""
    daemons = {"zebra", "staticd", "nhrpd"}
    r = site.routing
    if r.ospf is not None:
        daemons.add("ospfd")
    if r.bgp is not None:
        daemons.add("bgpd")
    if r.eigrp is not None and r.eigrp.experimental:
        daemons.add("eigrpd")
    return frozenset(daemons)


def render_frr(site: Site) -> FrrSpec:
    return FrrSpec(config=render_frr_conf(site), daemons=frr_daemons(site))


def render_frr_files(spec: FrrSpec) -> tuple[RenderedFile, ...]:
    return (
        # Secret: it holds the OSPF MD5 key and the BGP password; frr must read it.
        RenderedFile(FRR_CONF_PATH, spec.config, mode=0o640, owner="frr", group="frr", secret=True),
        RenderedFile(DAEMONS_PATH, render_daemons_file(spec.daemons), mode=0o640, owner="frr", group="frr"),
        # vtysh reads one integrated frr.conf (what frr-reload.py and 'write memory' expect).
        RenderedFile(VTYSH_CONF_PATH, "service integrated-vtysh-config\n", mode=0o640, owner="frr", group="frrvty"),
    )


def render_daemons_file(daemons: frozenset[str]) -> str:
    """Debian's /etc/frr/daemons with `<daemon>=yes` for ours (zebra/staticd have no line)."""
    return template("daemons.j2").render(daemons=sorted(daemons))


# --- frr.conf -------------------------------------------------------------------------------


def render_frr_conf(site: Site) -> str:
    out = ["frr defaults traditional", f"hostname {site.system.hostname}", "log syslog informational"]
    out.append("no ipv6 forwarding")
    nhrp = site.dmvpn.nhrp
    if site.role == "hub" and nhrp.phase == 3:
        out.append(f"nhrp nflog-group {NFLOG_REDIRECT_GROUP}")
    if nhrp.multicast:
        out.append(f"nhrp multicast-nflog-group {NFLOG_MULTICAST_GROUP}")
    out += ["service integrated-vtysh-config", "!"]

    routes = static_route_lines(site)
    if routes:
        out += [*routes, "!"]

    for name, lines in sorted(interface_lines(site).items()):
        out += [f"interface {name}", *(f" {line}" for line in sorted(lines)), "exit", "!"]

    r = site.routing
    if r.eigrp is not None and r.eigrp.experimental:
        out += eigrp_lines(site, r.eigrp)
    if r.bgp is not None:
        out += bgp_lines(site, r.bgp)
    if r.ospf is not None:
        out += ospf_lines(site)
    return "\n".join(out) + "\n"


def _network_key(net: IPv4Network) -> tuple[int, int]:
    return int(net.network_address), net.prefixlen


def static_route_lines(site: Site) -> list[str]:
    """staticd routes in its table order (prefix, then distance, then next hop)."""
    from ..model.schema import StaticRoute  # rendering only: the module is imported without pydantic

    routes = list(site.routing.static)
    t = site.dmvpn.tunnel
    if site.role == "hub":
        # Measured: shortcuts stay incomplete until the hub advertises the whole overlay.
        routes.append(StaticRoute(prefix=t.prefix, blackhole=True))
    elif site.routing.bgp is not None:
        # BGP (unlike OSPF hellos) needs unicast reachability of the NHS before the session exists:
        # a host route to each NHS. Not the whole overlay on the interface: nhrpd answers a
        # resolution request along its route to the requester, and over that route it found no NBMA
        # address (`lookup 0.0.0.0`), so no shortcut ever formed (measured); the overlay comes from
        # the hub, through it, as with OSPF.
        for nhs in site.dmvpn.nhrp.nhs:
            routes.append(StaticRoute(prefix=f"{nhs.address}/32", interface=t.name))
    keyed = {}
    for route in routes:
        target = []
        if route.blackhole:
            target.append("blackhole")
        else:
            if route.via is not None:
                target.append(str(route.via))
            if route.interface is not None:
                target.append(route.interface)
        if route.distance is not None:
            target.append(str(route.distance))
        line = f"ip route {route.prefix} {' '.join(target)}"
        kind = 2 if route.blackhole else (0 if route.via is not None else 1)
        via = int(route.via) if route.via is not None else 0
        keyed[line] = (*_network_key(route.prefix), route.distance or 1, kind, via, line)
    return sorted(keyed, key=keyed.__getitem__)


def ospf_network_type(site: Site, ospf: Ospf) -> str:
    if ospf.network_type is not None:
        return ospf.network_type
    if site.dmvpn.nhrp.phase == 2:
        return "broadcast"
    # Measured: point-to-point on a hub with several spokes sticks in ExStart, and so does a spoke
    # with two hubs ("Point-to-Point link on interface dmvpn0 has more than 1 neighbor").
    if site.role == "hub" or len(site.dmvpn.nhrp.nhs) > 1:
        return "point-to-multipoint"
    return "point-to-point"


def _area(ospf: Ospf) -> str:
    return str(ospf.area)  # FRR keeps the form it was given: '0' stays '0', '0.0.0.0' stays dotted


def interface_lines(site: Site) -> dict[str, list[str]]:
    t = site.dmvpn.tunnel
    nhrp = site.dmvpn.nhrp
    hub = site.role == "hub"
    tun = [f"ip nhrp network-id {nhrp.network_id}", f"tunnel source {site.tunnel_source}"]
    if nhrp.holdtime != NHRP_HOLDTIME_DEFAULT:
        tun.append(f"ip nhrp holdtime {nhrp.holdtime}")
    if nhrp.authentication is not None:
        tun.append(f"ip nhrp authentication {nhrp.authentication}")
    if hub:
        if nhrp.multicast:
            tun.append("ip nhrp map multicast dynamic")
        if nhrp.phase == 3:
            tun.append("ip nhrp redirect")
    else:
        if nhrp.registration_no_unique:
            tun.append("ip nhrp registration no-unique")
        for nhs in nhrp.nhs:
            tun.append(f"ip nhrp nhs {nhs.address} nbma {nhs.nbma}")
            # 'map multicast' takes an address only; a hub given by name gets no multicast copy.
            if nhrp.multicast and isinstance(nhs.nbma, IPv4Address):
                tun.append(f"ip nhrp map multicast {nhs.nbma}")
        if nhrp.phase in (2, 3):
            tun.append("ip nhrp shortcut")
    lines = {t.name: tun}
    for lan in site.interfaces.lan:
        lines[lan.name] = []

    ospf = site.routing.ospf
    if ospf is not None:
        area = _area(ospf)
        tun.append(f"ip ospf area {area}")
        if ospf.authentication is not None:
            tun.append("ip ospf authentication message-digest")
            tun.append(
                f"ip ospf message-digest-key {ospf.authentication.key_id} md5 {ospf.authentication.key.reveal()}"
            )
        if ospf.hello_interval != OSPF_HELLO_DEFAULT:
            tun.append(f"ip ospf hello-interval {ospf.hello_interval}")
        tun.append(f"ip ospf dead-interval {ospf.dead_interval}")
        network = ospf_network_type(site, ospf)
        if network != "broadcast":
            tun.append(f"ip ospf network {network}")
        priority = ospf.priority
        if priority is None and network == "broadcast":
            priority = OSPF_PHASE2_HUB_PRIORITY if hub else OSPF_PHASE2_SPOKE_PRIORITY
        if priority is not None and priority != OSPF_PRIORITY_DEFAULT:
            tun.append(f"ip ospf priority {priority}")
        if ospf.cost is not None:
            tun.append(f"ip ospf cost {ospf.cost}")
        passive = set(ospf.passive) if ospf.passive is not None else {lan.name for lan in site.interfaces.lan}
        for lan in site.interfaces.lan:
            lines[lan.name].append(f"ip ospf area {area}")
            if lan.name in passive:
                lines[lan.name].append("ip ospf passive")
    return {name: body for name, body in lines.items() if body}


def ospf_lines(site: Site) -> list[str]:
    ospf = site.routing.ospf
    out = ["router ospf", f" ospf router-id {ospf.router_id}"]
    if site.role == "hub":
        out.append(" redistribute static")  # carries the overlay blackhole (see static_route_lines)
    return [*out, "exit", "!"]


def bgp_networks(site: Site, bgp: Bgp) -> list[IPv4Network]:
    nets = set(bgp.networks if bgp.networks is not None else (lan.address.network for lan in site.interfaces.lan))
    if site.role == "hub":
        nets.add(site.dmvpn.tunnel.prefix)  # the hub originates the overlay (blackhole), as with OSPF
    return sorted(nets, key=_network_key)


BGP_CONNECT_RETRY_S = 10


def bgp_lines(site: Site, bgp: Bgp) -> list[str]:
    hub = site.role == "hub"
    remote_asn = bgp.asn if hub else (bgp.hub_asn or bgp.asn)
    ebgp = remote_asn != bgp.asn
    out = [f"router bgp {bgp.asn}", f" bgp router-id {bgp.router_id}"]
    if ebgp:
        out.append(" no bgp ebgp-requires-policy")
    peers = [BGP_SPOKES_PEER_GROUP] if hub else [str(nhs.address) for nhs in site.dmvpn.nhrp.nhs]
    for peer in peers:
        if hub:
            out.append(f" neighbor {peer} peer-group")
        out.append(f" neighbor {peer} remote-as {remote_asn}")
        if bgp.password is not None:
            out.append(f" neighbor {peer} password {bgp.password.reveal()}")
        if ebgp:
            # The tunnel address is a /32: no peer is on a connected subnet.
            out.append(f" neighbor {peer} disable-connected-check")
        out.append(f" neighbor {peer} timers {bgp.keepalive} {bgp.holdtime}")
        # The first SYN to a peer across the DMVPN often waits for IKE and is lost; FRR's default
        # retry is 120 s (measured: BGP took minutes to establish in the lab), so retry every 10 s.
        out.append(f" neighbor {peer} timers connect {BGP_CONNECT_RETRY_S}")
    if hub:
        out.append(f" bgp listen range {site.dmvpn.tunnel.prefix} peer-group {BGP_SPOKES_PEER_GROUP}")
    out += [" !", " address-family ipv4 unicast"]
    out += [f"  network {net}" for net in bgp_networks(site, bgp)]
    if hub:
        out += [f"  aggregate-address {net} summary-only" for net in sorted(bgp.summary_only, key=_network_key)]
        out.append(f"  neighbor {BGP_SPOKES_PEER_GROUP} route-reflector-client")
    return [*out, " exit-address-family", "exit", "!"]


def eigrp_lines(site: Site, eigrp: Eigrp) -> list[str]:
    out = [f"router eigrp {eigrp.asn}"]
    if eigrp.router_id is not None:
        out.append(f" eigrp router-id {eigrp.router_id}")
    nets = eigrp.networks
    if nets is None:
        nets = [site.dmvpn.tunnel.prefix, *(lan.address.network for lan in site.interfaces.lan)]
    out += [f" network {net}" for net in nets]
    return [*out, "exit", "!"]
