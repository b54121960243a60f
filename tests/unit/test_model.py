"""The site model: every example loads; every bad input gets its exact message and position."""

from __future__ import annotations

import os
import textwrap
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from appliance.model.loader import SiteError
from appliance.model.validate import load_site

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(p for p in (ROOT / "examples").rglob("*.yaml") if not p.name.startswith("lab"))
ENV = {"DMVPN_PSK": "test-psk-not-secret-0123456789", "OSPF_KEY": "ospf-md5"}

SPOKE = """\
system:
  hostname: spoke1
interfaces:
  public:
    name: eth0
    address: 198.51.100.2/30
    gateway: 198.51.100.1
  lan:
    - name: eth1
      address: 10.0.1.1/24
dmvpn:
  role: spoke
  tunnel:
    address: 172.16.0.11
    prefix: 172.16.0.0/24
    key: 42
  nhrp:
    nhs:
      - {address: 172.16.0.1, nbma: 192.0.2.2}
ipsec:
  auth:
    psk: {env: DMVPN_PSK}
"""


def write(tmp_path: Path, text: str, name: str = "site.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def errors_of(path: Path, env: dict | None = None, frr: tuple[int, int] = (8, 4)) -> list[str]:
    with pytest.raises(SiteError) as exc:
        load_site(path, env=ENV if env is None else env, frr_version=frr)
    return [p.headline().removeprefix(f"{path}:") for p in exc.value.problems]


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: str(p.relative_to(ROOT / "examples")))
def test_every_example_is_valid(example: Path) -> None:
    loaded = load_site(example, env=ENV, frr_version=(8, 4))
    assert loaded.site.system.hostname
    assert loaded.site.dmvpn.tunnel.address in loaded.site.dmvpn.tunnel.prefix


def test_valid_spoke_has_defaults_from_the_issue(tmp_path: Path) -> None:
    site = load_site(write(tmp_path, SPOKE), env=ENV, frr_version=(8, 4)).site
    assert site.dmvpn.tunnel.mtu == 1400
    assert site.dmvpn.tunnel.tcp_mss == 1360
    assert site.ipsec.ike_version == 2
    assert site.ipsec.ike_proposals == ["aes256gcm16-prfsha384-ecp384"]
    assert site.ipsec.esp_proposals == ["aes256gcm16-ecp384"]
    assert site.tunnel_source == "eth0"
    assert site.ipsec.auth.psk.reveal() == ENV["DMVPN_PSK"]


def test_unknown_field_points_at_the_key(tmp_path: Path) -> None:
    p = write(
        tmp_path, SPOKE.replace("      address: 10.0.1.1/24\n", "      address: 10.0.1.1/24\n      colour: red\n")
    )
    assert errors_of(p) == ["11:7: interfaces.lan[0].colour: unknown field"]


def test_missing_required_field_names_the_full_path(tmp_path: Path) -> None:
    p = write(tmp_path, SPOKE.replace("  role: spoke\n", ""))
    assert errors_of(p) == ["11:1: dmvpn.role: required field is missing"]


def test_bad_address_points_at_the_value(tmp_path: Path) -> None:
    p = write(tmp_path, SPOKE.replace("198.51.100.2/30", "198.51.100.300/30"))
    assert errors_of(p) == ["6:14: interfaces.public.address: Input is not a valid IPv4 interface"]


def test_bad_hostname_says_so(tmp_path: Path) -> None:
    p = write(tmp_path, SPOKE.replace("hostname: spoke1", "hostname: spoke_1"))
    assert errors_of(p) == ["2:13: system.hostname: 'spoke_1' is not a valid hostname"]


def test_duplicate_key_is_rejected(tmp_path: Path) -> None:
    p = write(tmp_path, SPOKE.replace("  hostname: spoke1\n", "  hostname: spoke1\n  hostname: spoke2\n"))
    assert errors_of(p) == ["3:3: hostname: duplicate key"]


def test_yaml_syntax_error_has_a_position(tmp_path: Path) -> None:
    p = write(tmp_path, "system: [hostname\n")
    assert errors_of(p) == ["2:1: (yaml): expected ',' or ']', but got '<stream end>'"]


def test_missing_file_is_one_clear_line(tmp_path: Path) -> None:
    assert errors_of(tmp_path / "nope.yaml") == ["0:0: (file): no such file"]


def test_all_errors_are_reported_at_once_with_source_and_caret(tmp_path: Path) -> None:
    text = SPOKE.replace("172.16.0.11", "172.16.1.11").replace("gateway: 198.51.100.1", "gateway: 198.51.100.9")
    p = write(tmp_path, text)
    with pytest.raises(SiteError) as exc:
        load_site(p, env=ENV, frr_version=(8, 4))
    assert str(exc.value).splitlines() == [
        f"{p}:7:14: interfaces.public.gateway: gateway 198.51.100.9 is not in 198.51.100.0/30",
        "        gateway: 198.51.100.9",
        "                 ^",
        f"{p}:14:14: dmvpn.tunnel.address: 172.16.1.11 is not inside the overlay 172.16.0.0/24",
        "        address: 172.16.1.11",
        "                 ^",
    ]


def test_overlay_address_outside_prefix(tmp_path: Path) -> None:
    p = write(tmp_path, SPOKE.replace("172.16.0.11", "172.16.1.11"))
    assert errors_of(p) == ["14:14: dmvpn.tunnel.address: 172.16.1.11 is not inside the overlay 172.16.0.0/24"]


def test_spoke_needs_an_nhs(tmp_path: Path) -> None:
    p = write(tmp_path, SPOKE.replace("    nhs:\n      - {address: 172.16.0.1, nbma: 192.0.2.2}\n", "    phase: 3\n"))
    assert errors_of(p) == ["17:3: dmvpn.nhrp.nhs: a spoke needs at least one NHS (its hub)"]


def test_hub_has_no_nhs(tmp_path: Path) -> None:
    p = write(tmp_path, SPOKE.replace("role: spoke", "role: hub"))
    assert errors_of(p) == ["18:5: dmvpn.nhrp.nhs: a hub has no NHS; list the hubs on the spokes"]


def test_nhrp_authentication_names_the_frr_version(tmp_path: Path) -> None:
    p = write(tmp_path, SPOKE.replace("  nhrp:\n", "  nhrp:\n    authentication: cisco1\n"))
    assert errors_of(p) == [
        "18:21: dmvpn.nhrp.authentication: FRR 8.4 has no 'ip nhrp authentication' command; "
        "remove the field (it needs FRR >= 10.1)"
    ]


def test_nhrp_authentication_is_a_warning_on_a_newer_frr(tmp_path: Path) -> None:
    p = write(tmp_path, SPOKE.replace("  nhrp:\n", "  nhrp:\n    authentication: cisco1\n"))
    loaded = load_site(p, env=ENV, frr_version=(10, 2))
    assert [w.headline().removeprefix(f"{p}:") for w in loaded.warnings] == [
        "18:21: warning: dmvpn.nhrp.authentication: NHRP authentication is a cleartext string for Cisco "
        "interop, not a security control"
    ]


def test_nhrp_authentication_longer_than_eight_characters(tmp_path: Path) -> None:
    p = write(tmp_path, SPOKE.replace("  nhrp:\n", "  nhrp:\n    authentication: ciscocisco\n"))
    assert errors_of(p) == ["18:21: dmvpn.nhrp.authentication: String should have at most 8 characters"]


def test_vrrp_address_outside_lan_and_duplicate_vrid(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        SPOKE
        + """\
vrrp:
  groups:
    - {name: a, interface: eth1, vrid: 7, virtual_addresses: [10.9.0.1/24]}
    - {name: b, interface: eth1, vrid: 7, virtual_addresses: [10.0.1.254/24]}
""",
    )
    assert errors_of(p) == [
        "25:63: vrrp.groups[0].virtual_addresses[0]: 10.9.0.1 is not in eth1's subnet 10.0.1.0/24",
        "26:40: vrrp.groups[1].vrid: VRID 7 is already used on eth1 (vrrp.groups[0])",
    ]


def test_vrrp_sub_second_needs_version_3(tmp_path: Path) -> None:
    group = (
        "    - {name: a, interface: eth1, vrid: 7, version: 2, advert_interval: 0.5, "
        "virtual_addresses: [10.0.1.254/24]}\n"
    )
    p = write(tmp_path, SPOKE + "vrrp:\n  groups:\n" + group)
    assert errors_of(p) == ["25:72: vrrp.groups[0].advert_interval: sub-second intervals need VRRP version 3"]


def test_ospf_md5_key_longer_than_16_bytes(tmp_path: Path) -> None:
    ospf = "routing:\n  ospf:\n    router_id: 10.0.1.1\n    authentication:\n      key: {env: OSPF_KEY}\n"
    p = write(tmp_path, SPOKE + ospf)
    env = {**ENV, "OSPF_KEY": "x" * 17}
    assert errors_of(p, env=env) == [
        "27:7: routing.ospf.authentication.key: an OSPF MD5 key has at most 16 bytes (this one has 17)"
    ]


def test_missing_env_secret(tmp_path: Path) -> None:
    p = write(tmp_path, SPOKE)
    assert errors_of(p, env={}) == ["22:16: ipsec.auth.psk.env: environment variable DMVPN_PSK is not set"]


def test_psk_file_relative_to_site_and_world_readable_refused(tmp_path: Path) -> None:
    secret = tmp_path / "psk"
    secret.write_text("a-long-enough-pre-shared-key-0123\n")
    os.chmod(secret, 0o644)
    p = write(tmp_path, SPOKE.replace("{env: DMVPN_PSK}", "{file: psk}"))
    assert errors_of(p) == [f"22:17: ipsec.auth.psk.file: {secret} is world-readable; chmod 600 it"]
    os.chmod(secret, 0o600)
    site = load_site(p, env={}, frr_version=(8, 4)).site
    assert site.ipsec.auth.psk.reveal() == "a-long-enough-pre-shared-key-0123"


def test_x509_files_must_exist_and_key_be_private(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("ca")
    key = tmp_path / "key.pem"
    key.write_text("key")
    os.chmod(key, 0o644)
    x509 = "    x509: {ca: ca.pem, cert: cert.pem, key: key.pem}\n"
    p = write(tmp_path, SPOKE.replace("    psk: {env: DMVPN_PSK}\n", x509))
    assert errors_of(p) == [
        f"22:30: ipsec.auth.x509.cert: {tmp_path / 'cert.pem'}: no such file",
        f"22:45: ipsec.auth.x509.key: {key} is world-readable; chmod 600 it",
    ]


def test_short_psk_and_ikev1_are_warnings(tmp_path: Path) -> None:
    p = write(tmp_path, SPOKE.replace("ipsec:\n", "ipsec:\n  ike_version: 1\n"))
    loaded = load_site(p, env={"DMVPN_PSK": "short"}, frr_version=(8, 4))
    assert [w.headline().removeprefix(f"{p}:") for w in loaded.warnings] == [
        "21:16: warning: ipsec.ike_version: IKEv1 is weaker and slower than IKEv2; use it only for Cisco peers",
        "23:5: warning: ipsec.auth.psk: the PSK has 5 characters; use at least 20 random ones",
    ]


def test_psk_and_x509_together_is_an_error(tmp_path: Path) -> None:
    x509 = "    psk: {env: DMVPN_PSK}\n    x509: {ca: a, cert: b, key: c}\n"
    p = write(tmp_path, SPOKE.replace("    psk: {env: DMVPN_PSK}\n", x509))
    assert errors_of(p) == ["21:3: ipsec.auth: give exactly one of 'psk' or 'x509'"]


def test_eigrp_needs_experimental(tmp_path: Path) -> None:
    p = write(tmp_path, SPOKE + "routing:\n  eigrp:\n    asn: 100\n")
    assert errors_of(p) == [
        "24:3: routing.eigrp.experimental: FRR's eigrpd is incomplete (no authentication, no stub); "
        "set 'experimental: true' to use it"
    ]


def test_mss_must_fit_the_tunnel_mtu(tmp_path: Path) -> None:
    p = write(tmp_path, SPOKE.replace("    key: 42\n", "    key: 42\n    mtu: 1400\n    tcp_mss: 1380\n"))
    assert errors_of(p) == ["18:14: dmvpn.tunnel.tcp_mss: MSS 1380 does not fit the tunnel MTU 1400 (at most 1360)"]


def test_secrets_env_file_supplies_env_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = tmp_path / "secrets.env"
    secrets.write_text("# box secrets\nDMVPN_PSK='from-the-secrets-file-0123456789'\n")
    os.chmod(secrets, 0o600)
    monkeypatch.setenv("APPLIANCE_SECRETS_ENV", str(secrets))
    monkeypatch.delenv("DMVPN_PSK", raising=False)
    site = load_site(write(tmp_path, SPOKE), frr_version=(8, 4)).site
    assert site.ipsec.auth.psk.reveal() == "from-the-secrets-file-0123456789"
    monkeypatch.setenv("DMVPN_PSK", "the-environment-wins-0123456789")
    assert load_site(write(tmp_path, SPOKE), frr_version=(8, 4)).site.ipsec.auth.psk.reveal() == (
        "the-environment-wins-0123456789"
    )


def test_world_readable_secrets_env_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = tmp_path / "secrets.env"
    secrets.write_text("DMVPN_PSK=x\n")
    os.chmod(secrets, 0o644)
    monkeypatch.setenv("APPLIANCE_SECRETS_ENV", str(secrets))
    with pytest.raises(SiteError) as exc:
        load_site(write(tmp_path, SPOKE), frr_version=(8, 4))
    assert str(exc.value) == f"{secrets}:0:0: (file): world-readable; chmod 600 it"


def test_vrrp_tracking_its_own_interface_is_refused(tmp_path: Path) -> None:
    group = (
        "    - {name: lan, interface: eth1, vrid: 7, virtual_addresses: [10.0.1.254/24], track_interfaces: [eth1]}\n"
    )
    p = write(tmp_path, SPOKE + "vrrp:\n  groups:\n" + group)
    assert errors_of(p) == [
        "25:100: vrrp.groups[0].track_interfaces[0]: eth1 is the group's own interface (tracked already)"
    ]


def test_nhs_nbma_is_an_address_or_a_hostname(tmp_path: Path) -> None:
    site = load_site(write(tmp_path, SPOKE), env=ENV, frr_version=(8, 4)).site
    assert site.dmvpn.nhrp.nhs[0].nbma == IPv4Address("192.0.2.2")  # an address, not a str that looks like one
    named = load_site(write(tmp_path, SPOKE.replace("192.0.2.2}", "hub.example.net}")), env=ENV, frr_version=(8, 4))
    assert named.site.dmvpn.nhrp.nhs[0].nbma == "hub.example.net"
    for bad in ("192.0.2.300", "hub_1"):
        p = write(tmp_path, SPOKE.replace("192.0.2.2}", f"{bad}}}"))
        assert errors_of(p) == [f"19:37: dmvpn.nhrp.nhs[0].nbma: '{bad}' is neither an IPv4 address nor a hostname"]


SEMANTIC_CASES = {
    "dhcp_and_address": (
        [("    gateway: 198.51.100.1\n", "    dhcp: true\n")],
        ["6:14: interfaces.public.address: give either 'address' or 'dhcp: true', not both"],
    ),
    "nhs_outside_overlay_and_listed_twice": (
        [
            (
                "      - {address: 172.16.0.1, nbma: 192.0.2.2}\n",
                "      - {address: 172.16.1.1, nbma: 192.0.2.2}\n      - {address: 172.16.1.1, nbma: 192.0.2.3}\n",
            )
        ],
        [
            "19:19: dmvpn.nhrp.nhs[0].address: 172.16.1.1 is not inside the overlay 172.16.0.0/24",
            "20:19: dmvpn.nhrp.nhs[1].address: 172.16.1.1 is not inside the overlay 172.16.0.0/24",
            "20:19: dmvpn.nhrp.nhs[1].address: NHS 172.16.1.1 is listed twice",
        ],
    ),
    "lan_overlaps_overlay": (
        [("10.0.1.1/24", "172.16.0.200/24")],
        ["10:16: interfaces.lan[0].address: 172.16.0.0/24 overlaps the overlay 172.16.0.0/24"],
    ),
    "tunnel_sourced_elsewhere": (
        [("    key: 42\n", "    key: 42\n    source: eth1\n")],
        ["17:13: dmvpn.tunnel.source: the tunnel must be sourced from the public interface (eth0)"],
    ),
    "bgp_spoke_summary_and_short_holdtime": (
        [
            (
                "ipsec:\n",
                "routing:\n  bgp: {asn: 65000, router_id: 10.0.1.1, summary_only: [10.0.0.0/8], keepalive: 10, "
                "holdtime: 20}\nipsec:\n",
            )
        ],
        [
            "21:42: routing.bgp.summary_only: only a hub advertises summaries",
            "21:95: routing.bgp.holdtime: must be at least three keepalives",
        ],
    ),
    "ospf_passive_and_static_route_on_unknown_interfaces": (
        [
            (
                "ipsec:\n",
                "routing:\n  ospf: {router_id: 10.0.1.1, passive: [eth9]}\n  static:\n"
                "    - {prefix: 10.9.0.0/16, interface: eth9}\nipsec:\n",
            )
        ],
        [
            "21:41: routing.ospf.passive[0]: eth9 is not a LAN interface",
            "23:40: routing.static[0].interface: eth9 is not an interface of this site",
        ],
    ),
    "firewall_port_rules": (
        [
            (
                "ipsec:\n",
                "firewall:\n  public:\n    allow: [{protocol: udp, port: 500}]\n  tunnel:\n"
                "    rules: [{action: accept, protocol: icmp, port: 22}]\nipsec:\n",
            )
        ],
        [
            "24:52: firewall.tunnel.rules[0].port: a port needs protocol tcp or udp",
            "22:35: firewall.public.allow[0].port: IKE ports are always open",
        ],
    ),
    "vrrp_interval_own_address_peer_and_interface": (
        [
            (
                "ipsec:\n",
                "vrrp:\n  groups:\n    - {name: a, interface: eth1, vrid: 1, advert_interval: 0.055, "
                "virtual_addresses: [10.0.1.1/24], unicast_peers: [10.9.0.2]}\n"
                "    - {name: b, interface: eth7, vrid: 2, virtual_addresses: [10.0.1.9/24]}\nipsec:\n",
            )
        ],
        [
            "22:60: vrrp.groups[0].advert_interval: VRRPv3 intervals are in hundredths of a second",
            "22:87: vrrp.groups[0].virtual_addresses[0]: 10.0.1.1 is eth1's own address",
            "22:117: vrrp.groups[0].unicast_peers[0]: 10.9.0.2 is not in 10.0.1.0/24",
            "23:28: vrrp.groups[1].interface: eth7 is not a LAN interface",
        ],
    ),
}


@pytest.mark.parametrize("case", sorted(SEMANTIC_CASES))
def test_semantic_errors_have_exact_messages_and_positions(tmp_path: Path, case: str) -> None:
    edits, expected = SEMANTIC_CASES[case]
    text = SPOKE
    for old, new in edits:
        assert old in text
        text = text.replace(old, new)
    assert errors_of(write(tmp_path, text)) == expected
