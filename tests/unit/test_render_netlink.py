"""Kernel state: the mGRE tunnel, addresses, the default route, and the sysctls a DMVPN router needs."""

from __future__ import annotations

from pathlib import Path

from example_sites import example_text, load_text

from appliance.render.netlink import render_netlink
from appliance.render.spec import Address, LinkSettings, Route, TunnelLink
from appliance.render.sysctl import render_sysctl, render_sysctl_file

DHCP = ("    address: 198.51.100.2/30\n    gateway: 198.51.100.1\n", "    dhcp: true\n")


def test_mgre_tunnel_is_keyed_bound_to_the_public_interface_with_a_host_address(tmp_path: Path) -> None:
    spec = render_netlink(load_text(example_text("spoke1"), tmp_path).site)
    assert spec.tunnel == TunnelLink(
        name="dmvpn0", local="198.51.100.2", link="eth0", key=42, ttl=64, mtu=1400, address="172.16.0.11/32"
    )
    assert spec.addresses == (Address("eth0", "198.51.100.2/30"), Address("eth1", "10.0.1.1/24"))
    assert spec.routes == (Route(dst="0.0.0.0/0", gateway="198.51.100.1", ifname="eth0"),)
    assert spec.links == (LinkSettings("eth0"), LinkSettings("eth1"))
    assert spec.neighbours == ()  # NHRP maps are nhrpd's


def test_dhcp_public_interface_gets_no_static_address_route_or_tunnel_local(tmp_path: Path) -> None:
    spec = render_netlink(load_text(example_text("spoke1", DHCP), tmp_path).site)
    assert spec.tunnel.local is None
    assert spec.addresses == (Address("eth1", "10.0.1.1/24"),)
    assert spec.routes == ()


def test_mtus_and_an_unkeyed_tunnel(tmp_path: Path) -> None:
    edits = (
        ("    name: eth0\n", "    name: eth0\n    mtu: 1500\n"),
        ("      address: 10.0.1.1/24\n", "      address: 10.0.1.1/24\n      mtu: 9000\n"),
        ("    key: 42\n", "    mtu: 1380\n    tcp_mss: 1340\n"),
    )
    spec = render_netlink(load_text(example_text("spoke1", *edits), tmp_path).site)
    assert (spec.tunnel.key, spec.tunnel.mtu) == (None, 1380)
    assert spec.links == (LinkSettings("eth0", mtu=1500), LinkSettings("eth1", mtu=9000))


def test_sysctls_forward_ipv4_without_rp_filter_or_icmp_redirects(tmp_path: Path) -> None:
    keys = render_sysctl(load_text(example_text("hub"), tmp_path).site)
    assert keys == {
        "net.ipv4.conf.all.rp_filter": "0",
        "net.ipv4.conf.all.send_redirects": "0",
        "net.ipv4.conf.default.rp_filter": "0",
        "net.ipv4.conf.dmvpn0.rp_filter": "0",
        "net.ipv4.conf.dmvpn0.send_redirects": "0",
        "net.ipv4.ip_forward": "1",
        "net.ipv4.ip_forward_use_pmtu": "0",
        "net.ipv6.conf.all.forwarding": "0",
    }


def test_sysctl_file_tolerates_the_tunnel_missing_at_boot(tmp_path: Path) -> None:
    site = load_text(example_text("hub", ("    name: dmvpn0\n", "    name: dm.vpn0\n")), tmp_path).site
    f = render_sysctl_file(site, render_sysctl(site))
    assert (f.path, f.mode, f.secret) == ("/etc/sysctl.d/90-appliance.conf", 0o644, False)
    lines = f.content.splitlines()
    # '-': ignore the key while the tunnel does not exist; '/' stands for a dot in an interface name
    assert "-net.ipv4.conf.dm/vpn0.rp_filter = 0" in lines
    assert "net.ipv4.ip_forward = 1" in lines
