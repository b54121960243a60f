"""nftables: one python-nftables JSON batch that atomically replaces table `inet appliance`.

`add table; delete table; add table; ...` in one transaction: the delete never fails (the table
exists by then) and the ruleset is never half-loaded. Every rule carries a comment so that tests
and `show firewall` can find it; the public drop uses the named counter `public-drop`, the drop of
VRRP from a source that is no peer the named counter `vrrp-drop`.
"""

from __future__ import annotations

import json
from ipaddress import IPv4Network
from typing import TYPE_CHECKING, Any

from .frr import NFLOG_MULTICAST_GROUP, NFLOG_REDIRECT_GROUP
from .spec import FirewallSpec, RenderedFile

if TYPE_CHECKING:  # the schema is pydantic: typing only (see render/__init__.py)
    from ..model.schema import Site, TunnelRule

FAMILY = "inet"
TABLE = "appliance"
PUBLIC_DROP_COUNTER = "public-drop"
VRRP_DROP_COUNTER = "vrrp-drop"
TUNNEL_POLICY_CHAIN = "tunnel-policy"
NFTABLES_JSON_PATH = "/etc/appliance/nftables.json"  # boot-time restore: nft -j -f <this file>
NHRP_LOG_SNAPLEN = 128  # lab recipe: nhrpd needs only the headers to send a redirect
LINK_LOCAL_MULTICAST = IPv4Network("224.0.0.0/24")
VRRP_PROTOCOL = 112


# --- expression helpers (python-nftables JSON, as `nft -j list ruleset` prints it) -----------


def _eq(left: dict[str, Any], right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


def _meta(key: str) -> dict[str, Any]:
    return {"meta": {"key": key}}


def _payload(protocol: str, field: str) -> dict[str, Any]:
    return {"payload": {"protocol": protocol, "field": field}}


def _iif(name: str) -> dict[str, Any]:
    return _eq(_meta("iifname"), name)


def _oif(name: str) -> dict[str, Any]:
    return _eq(_meta("oifname"), name)


def _prefix(net: IPv4Network) -> Any:
    if net.prefixlen == 32:
        return str(net.network_address)
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


def _addresses(nets: list[IPv4Network]) -> Any:
    values = [_prefix(n) for n in nets]
    return values[0] if len(values) == 1 else {"set": values}


def _ct_state(*states: str) -> dict[str, Any]:
    return _eq({"ct": {"key": "state"}}, list(states) if len(states) > 1 else states[0], "in")


def _limit(rate: str) -> dict[str, Any]:
    count, per = rate.split("/")
    return {"limit": {"rate": int(count), "per": per}}


ACCEPT: dict[str, Any] = {"accept": None}
DROP: dict[str, Any] = {"drop": None}


class _Batch:
    def __init__(self) -> None:
        self.commands: list[dict[str, Any]] = [{"metainfo": {"json_schema_version": 1}}]

    def add(self, kind: str, **body: Any) -> None:
        self.commands.append({"add": {kind: {"family": FAMILY, "table": TABLE, **body}}})

    def chain(self, name: str, hook: str | None = None, kind: str = "filter", prio: int = 0) -> None:
        body: dict[str, Any] = {"name": name}
        if hook is not None:
            body.update(type=kind, hook=hook, prio=prio, policy="accept")
        self.add("chain", **body)

    def rule(self, chain: str, comment: str, *expr: dict[str, Any]) -> None:
        self.add("rule", chain=chain, expr=list(expr), comment=comment)


# --- the ruleset ------------------------------------------------------------------------------


def render_firewall(site: Site) -> FirewallSpec:
    b = _Batch()
    table = {"family": FAMILY, "name": TABLE}
    b.commands += [{"add": {"table": table}}, {"delete": {"table": table}}, {"add": {"table": table}}]
    b.add("counter", name=PUBLIC_DROP_COUNTER)
    if site.vrrp.groups:
        b.add("counter", name=VRRP_DROP_COUNTER)
    b.chain("input", hook="input")
    b.chain("forward", hook="forward")
    b.chain("output", hook="output")
    b.chain(TUNNEL_POLICY_CHAIN)
    if site.firewall.masquerade:
        b.chain("postrouting", hook="postrouting", kind="nat", prio=100)  # priority srcnat
    _input_rules(site, b)
    _forward_rules(site, b)
    _tunnel_policy_rules(site, b)
    _output_rules(site, b)
    if site.firewall.masquerade:
        lans = [lan.address.network for lan in site.interfaces.lan]
        if lans:
            pub = site.interfaces.public.name
            b.rule(
                "postrouting",
                "masquerade",
                _oif(pub),
                _eq(_payload("ip", "saddr"), _addresses(lans)),
                {"masquerade": None},
            )
    return FirewallSpec(table=TABLE, batch={"nftables": b.commands})


def _input_rules(site: Site, b: _Batch) -> None:
    pub = site.interfaces.public.name
    fw = site.firewall.public
    c = "input"
    b.rule(c, "public-established", _iif(pub), _ct_state("established", "related"), ACCEPT)
    b.rule(c, "public-invalid", _iif(pub), _ct_state("invalid"), DROP)
    if site.interfaces.public.dhcp:
        b.rule(
            c, "public-dhcp", _iif(pub), _eq(_payload("udp", "sport"), 67), _eq(_payload("udp", "dport"), 68), ACCEPT
        )
    b.rule(c, "public-ike", _iif(pub), _eq(_payload("udp", "dport"), {"set": [500, 4500]}), ACCEPT)
    b.rule(c, "public-esp", _iif(pub), _eq(_meta("l4proto"), "esp"), ACCEPT)
    # GRE only after it came out of ESP: cleartext GRE must never reach nhrpd or the tunnel.
    b.rule(c, "public-gre-ipsec", _iif(pub), _eq(_meta("l4proto"), "gre"), _eq(_meta("ipsec"), True), ACCEPT)
    if fw.icmp:
        b.rule(
            c,
            "public-icmp-echo",
            _iif(pub),
            _eq(_payload("icmp", "type"), "echo-request"),
            _limit(fw.icmp_rate),
            ACCEPT,
        )
    # Always: PMTU discovery needs fragmentation-needed (a destination-unreachable code).
    b.rule(
        c,
        "public-icmp-errors",
        _iif(pub),
        _eq(_payload("icmp", "type"), {"set": ["destination-unreachable", "time-exceeded"]}),
        _limit(fw.icmp_rate),
        ACCEPT,
    )
    for rule in fw.allow:
        expr = [_iif(pub), _eq(_payload(rule.protocol, "dport"), rule.port)]
        if rule.sources:
            expr.append(_eq(_payload("ip", "saddr"), _addresses(sorted(rule.sources))))
        b.rule(c, f"public-allow-{rule.protocol}-{rule.port}", *expr, ACCEPT)
    b.rule(c, "public-drop", _iif(pub), {"counter": PUBLIC_DROP_COUNTER}, DROP)
    _vrrp_rules(site, b)


def _vrrp_rules(site: Site, b: _Batch) -> None:
    """VRRP on a LAN only from the configured peers (else from the LAN's subnet).

    keepalived 2.2 has no VRRP authentication for v3 (and v2's is plain text): a LAN trusts an
    advertisement by its source address alone. Dropped ones are counted: a forged or misconfigured
    router on the LAN shows up in `vrrp-drop` rather than as a silent election."""
    for g in site.vrrp.groups:
        lan = site.lan(g.interface)
        if lan is None:
            continue
        sources = [IPv4Network(p) for p in g.unicast_peers] or [lan.address.network]
        proto = _eq(_payload("ip", "protocol"), VRRP_PROTOCOL)
        b.rule(
            "input",
            f"vrrp-{g.name}",
            _iif(g.interface),
            proto,
            _eq(_payload("ip", "saddr"), _addresses(sources)),
            ACCEPT,
        )
    for name in sorted({g.interface for g in site.vrrp.groups}):
        b.rule(
            "input",
            f"vrrp-drop-{name}",
            _iif(name),
            _eq(_payload("ip", "protocol"), VRRP_PROTOCOL),
            {"counter": VRRP_DROP_COUNTER},
            DROP,
        )


def _forward_rules(site: Site, b: _Batch) -> None:
    t = site.dmvpn.tunnel
    tun = t.name
    c = "forward"
    if t.tcp_mss is not None:
        mss = {"tcp option": {"name": "maxseg", "field": "size"}}
        for direction, match in (("out", _oif(tun)), ("in", _iif(tun))):
            b.rule(
                c,
                f"tcp-mss-{direction}",
                match,
                _eq(_payload("tcp", "flags"), "syn", "in"),
                _eq(mss, t.tcp_mss, ">"),
                {"mangle": {"key": mss, "value": t.tcp_mss}},
            )
    if site.role == "hub" and site.dmvpn.nhrp.phase == 3:
        # Spoke-to-spoke traffic through the hub: nhrpd reads it from NFLOG and sends a redirect.
        b.rule(
            c,
            "nhrp-redirect",
            _iif(tun),
            _oif(tun),
            {"limit": {"rate": site.firewall.redirect_rate, "per": "second"}},
            {"log": {"group": NFLOG_REDIRECT_GROUP, "snaplen": NHRP_LOG_SNAPLEN}},
        )
    b.rule(c, "tunnel-in", _iif(tun), {"jump": {"target": TUNNEL_POLICY_CHAIN}})
    b.rule(c, "tunnel-out", _oif(tun), {"jump": {"target": TUNNEL_POLICY_CHAIN}})


def _tunnel_rule_expr(rule: TunnelRule) -> list[dict[str, Any]]:
    expr = []
    if rule.sources:
        expr.append(_eq(_payload("ip", "saddr"), _addresses(sorted(rule.sources))))
    if rule.destinations:
        expr.append(_eq(_payload("ip", "daddr"), _addresses(sorted(rule.destinations))))
    if rule.protocol is not None:
        if rule.port is not None:
            expr.append(_eq(_payload(rule.protocol, "dport"), rule.port))
        else:
            expr.append(_eq(_meta("l4proto"), rule.protocol))
    return expr


def _tunnel_policy_rules(site: Site, b: _Batch) -> None:
    c = TUNNEL_POLICY_CHAIN
    policy = site.firewall.tunnel
    b.rule(c, "tunnel-established", _ct_state("established", "related"), ACCEPT)
    for i, rule in enumerate(policy.rules):
        b.rule(c, f"tunnel-rule-{i}", *_tunnel_rule_expr(rule), {rule.action: None})
    b.rule(c, "tunnel-default", {policy.default: None})


def _output_rules(site: Site, b: _Batch) -> None:
    if not site.dmvpn.nhrp.multicast:
        return
    tun = site.dmvpn.tunnel.name
    dst = _eq(_payload("ip", "daddr"), _prefix(LINK_LOCAL_MULTICAST))
    # mGRE has no multicast of its own: nhrpd copies these (OSPF hellos) to each peer from NFLOG.
    b.rule("output", "nhrp-multicast-log", _oif(tun), dst, {"log": {"group": NFLOG_MULTICAST_GROUP}})
    b.rule("output", "nhrp-multicast-drop", _oif(tun), dst, DROP)


def render_firewall_files(spec: FirewallSpec) -> tuple[RenderedFile, ...]:
    return (RenderedFile(NFTABLES_JSON_PATH, json.dumps(spec.batch, indent=2) + "\n"),)
