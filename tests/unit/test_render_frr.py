"""frr.conf decisions that make DMVPN work (the live test proves the form, these the content)."""

from __future__ import annotations

from pathlib import Path

from example_sites import FAKE_SECRETS, example_text, load_text

from appliance.model.schema import Site
from appliance.render.frr import render_daemons_file, render_frr, render_frr_files


def site(tmp_path: Path, name: str, *edits: tuple[str, str]) -> Site:
    return load_text(example_text(name, *edits), tmp_path).site


def conf(tmp_path: Path, name: str, *edits: tuple[str, str]) -> str:
    return render_frr(site(tmp_path, name, *edits)).config


def block(config: str, header: str) -> list[str]:
    """The lines of one block ('interface dmvpn0', 'router ospf') without its header and exit."""
    lines = config.splitlines()
    start = lines.index(header)
    end = lines.index("exit", start)
    return [line.strip() for line in lines[start + 1 : end]]


def test_hub_originates_the_overlay_as_a_blackhole_and_redistributes_it(tmp_path: Path) -> None:
    c = conf(tmp_path, "hub")
    assert "ip route 172.16.0.0/24 blackhole" in c.splitlines()
    assert block(c, "router ospf") == ["ospf router-id 10.0.0.1", "redistribute static"]


def test_spoke_has_no_blackhole_and_no_redistribution(tmp_path: Path) -> None:
    c = conf(tmp_path, "spoke1")
    assert "blackhole" not in c
    assert block(c, "router ospf") == ["ospf router-id 10.0.1.1"]


def test_ospf_network_type_spoke_point_to_point_hub_point_to_multipoint(tmp_path: Path) -> None:
    assert "ip ospf network point-to-point" in block(conf(tmp_path, "spoke1"), "interface dmvpn0")
    assert "ip ospf network point-to-multipoint" in block(conf(tmp_path, "hub"), "interface dmvpn0")


def test_ospf_network_type_spoke_with_two_hubs_point_to_multipoint(tmp_path: Path) -> None:
    # A point-to-point link takes one neighbour: with two hubs ospfd sticks in ExStart (HA lab).
    tun = block(conf(tmp_path, "spoke-dual-hub"), "interface dmvpn0")
    assert "ip ospf network point-to-multipoint" in tun


def test_phase2_runs_broadcast_with_the_hub_as_dr_and_spokes_never_dr(tmp_path: Path) -> None:
    phase2 = ("    phase: 3\n", "    phase: 2\n")
    hub = block(conf(tmp_path, "hub", phase2), "interface dmvpn0")
    spoke = block(conf(tmp_path, "spoke1", phase2), "interface dmvpn0")
    # broadcast is ospfd's default on a non-point-to-point link: FRR does not print it, nor do we
    assert not [line for line in hub + spoke if line.startswith("ip ospf network")]
    assert "ip ospf priority 255" in hub
    assert "ip ospf priority 0" in spoke


def test_explicit_network_type_and_priority_win(tmp_path: Path) -> None:
    edits = (
        "    hello_interval: 2\n",
        "    network_type: point-to-multipoint\n    priority: 7\n    hello_interval: 2\n",
    )
    tun = block(conf(tmp_path, "spoke1", edits), "interface dmvpn0")
    assert "ip ospf network point-to-multipoint" in tun
    assert "ip ospf priority 7" in tun


def test_phase3_hub_sends_redirects_and_reads_them_from_nflog_group_1(tmp_path: Path) -> None:
    c = conf(tmp_path, "hub")
    assert "ip nhrp redirect" in block(c, "interface dmvpn0")
    assert "nhrp nflog-group 1" in c.splitlines()
    assert "ip nhrp shortcut" not in c


def test_phase3_spoke_takes_shortcuts_and_sends_no_redirects(tmp_path: Path) -> None:
    c = conf(tmp_path, "spoke1")
    tun = block(c, "interface dmvpn0")
    assert "ip nhrp shortcut" in tun
    assert "ip nhrp redirect" not in tun
    assert "nhrp nflog-group 1" not in c


def test_phase1_has_neither_shortcuts_nor_redirects(tmp_path: Path) -> None:
    phase1 = ("    phase: 3\n", "    phase: 1\n")
    for name in ("hub", "spoke1"):
        c = conf(tmp_path, name, phase1)
        assert "shortcut" not in c and "redirect" not in c and "nflog-group 1" not in c


def test_spoke_registers_with_each_nhs_and_copies_multicast_to_it(tmp_path: Path) -> None:
    tun = block(conf(tmp_path, "spoke-dual-hub"), "interface dmvpn0")
    assert [line for line in tun if line.startswith("ip nhrp nhs") or line.startswith("ip nhrp map")] == [
        "ip nhrp map multicast 192.0.2.2",
        "ip nhrp map multicast 192.0.2.6",
        "ip nhrp nhs 172.16.0.1 nbma 192.0.2.2",
        "ip nhrp nhs 172.16.0.2 nbma 192.0.2.6",
    ]
    assert "ip nhrp registration no-unique" in tun


def test_hub_copies_multicast_to_every_registered_spoke(tmp_path: Path) -> None:
    c = conf(tmp_path, "hub")
    assert "ip nhrp map multicast dynamic" in block(c, "interface dmvpn0")
    assert "nhrp multicast-nflog-group 2" in c.splitlines()


def test_hub_given_by_name_is_registered_but_gets_no_multicast_map(tmp_path: Path) -> None:
    tun = block(conf(tmp_path, "spoke1", ("nbma: 192.0.2.2}", "nbma: hub.example.net}")), "interface dmvpn0")
    assert "ip nhrp nhs 172.16.0.1 nbma hub.example.net" in tun
    assert not [line for line in tun if line.startswith("ip nhrp map multicast")]


def test_multicast_off_means_no_nflog_group_and_no_maps(tmp_path: Path) -> None:
    c = conf(tmp_path, "spoke1", ("    phase: 3\n", "    phase: 3\n    multicast: false\n"))
    assert "multicast" not in c


def test_tunnel_interface_lines_nhrp_identity_and_ospf_md5(tmp_path: Path) -> None:
    tun = block(conf(tmp_path, "spoke1"), "interface dmvpn0")
    assert tun == sorted(tun)  # vtysh prints an interface's lines sorted
    assert "ip nhrp network-id 42" in tun
    assert "ip nhrp holdtime 300" in tun
    assert "tunnel source eth0" in tun
    assert "ip ospf authentication message-digest" in tun
    assert f"ip ospf message-digest-key 1 md5 {FAKE_SECRETS['OSPF_KEY']}" in tun
    assert "ip ospf hello-interval 2" in tun and "ip ospf dead-interval 8" in tun


def test_values_equal_to_frr_defaults_are_not_written(tmp_path: Path) -> None:
    edits = (
        ("    network_id: 42\n", "    network_id: 42\n    holdtime: 7200\n"),
        ("    hello_interval: 2\n    dead_interval: 8\n", "    hello_interval: 10\n    dead_interval: 40\n"),
    )
    tun = block(conf(tmp_path, "spoke1", *edits), "interface dmvpn0")
    assert not [line for line in tun if "holdtime" in line or "hello-interval" in line]


def test_lans_are_passive_ospf_interfaces_unless_listed(tmp_path: Path) -> None:
    assert block(conf(tmp_path, "spoke1"), "interface eth1") == ["ip ospf area 0", "ip ospf passive"]
    active = conf(tmp_path, "spoke1", ("    hello_interval: 2\n", "    passive: []\n    hello_interval: 2\n"))
    assert block(active, "interface eth1") == ["ip ospf area 0"]


def test_hostname_is_written_so_that_the_reload_delta_can_be_empty(tmp_path: Path) -> None:
    assert conf(tmp_path, "spoke1").splitlines()[:3] == [
        "frr defaults traditional",
        "hostname spoke1",
        "log syslog informational",
    ]


def test_bgp_hub_is_a_route_reflector_listening_on_the_overlay(tmp_path: Path) -> None:
    c = conf(tmp_path, "bgp/hub")
    assert block(c, "router bgp 65000") == [
        "bgp router-id 10.0.0.1",
        "neighbor SPOKES peer-group",
        "neighbor SPOKES remote-as 65000",
        "neighbor SPOKES timers 10 30",
        "neighbor SPOKES timers connect 10",
        "bgp listen range 172.16.0.0/24 peer-group SPOKES",
        "!",
        "address-family ipv4 unicast",
        "network 10.0.0.0/24",
        "network 172.16.0.0/24",
        "aggregate-address 10.0.0.0/16 summary-only",
        "neighbor SPOKES route-reflector-client",
        "exit-address-family",
    ]
    assert "ip route 172.16.0.0/24 blackhole" in c.splitlines()


def test_bgp_spoke_peers_with_each_nhs_and_reaches_it_over_the_tunnel(tmp_path: Path) -> None:
    c = conf(tmp_path, "bgp/spoke1", ("      - {address: 172.16.0.1, nbma: 192.0.2.2}\n",
                                      "      - {address: 172.16.0.1, nbma: 192.0.2.2}\n"
                                      "      - {address: 172.16.0.2, nbma: 192.0.2.6}\n"))  # fmt: skip
    bgp = block(c, "router bgp 65000")
    assert [line for line in bgp if "remote-as" in line] == [
        "neighbor 172.16.0.1 remote-as 65000",
        "neighbor 172.16.0.2 remote-as 65000",
    ]
    assert "network 10.0.1.0/24" in bgp and "network 172.16.0.0/24" not in bgp
    # BGP needs the NHS reachable before it peers; the rest of the overlay comes from the hub (shortcuts)
    assert [line for line in c.splitlines() if line.startswith("ip route")] == [
        "ip route 172.16.0.1/32 dmvpn0",
        "ip route 172.16.0.2/32 dmvpn0",
    ]
    assert "router ospf" not in c


def test_ebgp_spoke_turns_off_the_policy_requirement_and_connected_check(tmp_path: Path) -> None:
    edits = ("    asn: 65000\n", "    asn: 65011\n    hub_asn: 65000\n    password: {env: BGP_PASSWORD}\n")
    bgp = block(conf(tmp_path, "bgp/spoke1", edits), "router bgp 65011")
    assert bgp[:6] == [
        "bgp router-id 10.0.1.1",
        "no bgp ebgp-requires-policy",
        "neighbor 172.16.0.1 remote-as 65000",
        f"neighbor 172.16.0.1 password {FAKE_SECRETS['BGP_PASSWORD']}",
        "neighbor 172.16.0.1 disable-connected-check",
        "neighbor 172.16.0.1 timers 10 30",
    ]


def test_static_routes_in_staticd_order(tmp_path: Path) -> None:
    static = (
        "      key: {env: OSPF_KEY}\n",
        "      key: {env: OSPF_KEY}\n  static:\n"
        "    - {prefix: 10.30.0.0/16, blackhole: true}\n"
        "    - {prefix: 10.20.0.0/16, via: 10.0.1.254, distance: 200}\n"
        "    - {prefix: 10.20.0.0/16, via: 10.0.1.253}\n"
        "    - {prefix: 10.20.0.0/16, interface: eth1}\n",
    )
    routes = [line for line in conf(tmp_path, "spoke1", static).splitlines() if line.startswith("ip route")]
    assert routes == [
        "ip route 10.20.0.0/16 10.0.1.253",
        "ip route 10.20.0.0/16 eth1",
        "ip route 10.20.0.0/16 10.0.1.254 200",
        "ip route 10.30.0.0/16 blackhole",
    ]


def test_eigrp_only_when_experimental(tmp_path: Path) -> None:
    eigrp = ("  ospf:\n", "  eigrp:\n    experimental: true\n    asn: 100\n  ospf:\n")
    spec = render_frr(site(tmp_path, "spoke1", eigrp))
    assert "eigrpd" in spec.daemons
    assert block(spec.config, "router eigrp 100") == ["network 172.16.0.0/24", "network 10.0.1.0/24"]


def test_daemons_are_exactly_what_the_site_uses(tmp_path: Path) -> None:
    assert render_frr(site(tmp_path, "spoke1")).daemons == {"zebra", "staticd", "nhrpd", "ospfd"}
    assert render_frr(site(tmp_path, "bgp/hub")).daemons == {"zebra", "staticd", "nhrpd", "bgpd"}
    daemons_file = render_daemons_file(frozenset({"zebra", "staticd", "nhrpd", "bgpd"}))
    enabled = sorted(line for line in daemons_file.splitlines() if line.endswith("=yes"))
    assert enabled == ["bgpd=yes", "nhrpd=yes", "vtysh_enable=yes"]


def test_frr_conf_is_a_secret_file_readable_by_frr_only(tmp_path: Path) -> None:
    files = {f.path: f for f in render_frr_files(render_frr(site(tmp_path, "hub")))}
    frr_conf = files["/etc/frr/frr.conf"]
    assert (frr_conf.mode, frr_conf.owner, frr_conf.group, frr_conf.secret) == (0o640, "frr", "frr", True)
    assert files["/etc/frr/vtysh.conf"].content == "service integrated-vtysh-config\n"
