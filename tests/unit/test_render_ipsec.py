"""strongSwan: one trap-mode transport connection protecting GRE to any peer, as VICI and swanctl.conf."""

from __future__ import annotations

import os
from pathlib import Path

from example_sites import FAKE_SECRETS, example_text, load_text

from appliance.render.ipsec import render_ipsec, render_ipsec_files, render_swanctl_conf

PSK = "    psk: {env: DMVPN_PSK}\n"


def conn(tmp_path: Path, *edits: tuple[str, str], name: str = "spoke1") -> dict:
    spec = render_ipsec(load_text(example_text(name, *edits), tmp_path).site)
    assert list(spec.connections) == ["dmvpn"]
    return spec.connections["dmvpn"]


def test_gre_is_protected_by_a_transport_mode_trap_to_any_peer(tmp_path: Path) -> None:
    c = conn(tmp_path)
    assert c["remote_addrs"] == ["%any"]
    assert c["local_addrs"] == ["198.51.100.2"]
    assert c["children"] == {
        "dmvpn": {
            "mode": "transport",
            "local_ts": ["dynamic[gre]"],
            "remote_ts": ["dynamic[gre]"],
            "esp_proposals": ["aes256gcm16-ecp384"],
            "start_action": "trap",
            "reqid": "1",
            "dpd_action": "trap",
            "rekey_time": "3600s",
            "close_action": "start",
        }
    }


def test_a_spoke_re_initiates_when_its_peer_closes_the_sa_and_a_hub_does_not(tmp_path: Path) -> None:
    # a spoke behind NAT is reachable only through an SA it opened itself (README, spokes behind NAT)
    assert conn(tmp_path, name="spoke3-nat")["children"]["dmvpn"]["close_action"] == "start"
    assert "close_action" not in conn(tmp_path, name="hub")["children"]["dmvpn"]


def test_ikev2_defaults(tmp_path: Path) -> None:
    c = conn(tmp_path)
    assert (c["version"], c["proposals"], c["mobike"], c["unique"]) == (
        "2",
        ["aes256gcm16-prfsha384-ecp384"],
        "no",
        "replace",
    )
    assert (c["dpd_delay"], c["rekey_time"]) == ("10s", "28800s")
    assert "dpd_timeout" not in c and "aggressive" not in c and "encap" not in c


def test_ikev1_for_cisco_uses_main_mode_and_a_dpd_timeout(tmp_path: Path) -> None:
    c = conn(tmp_path, ("ipsec:\n", "ipsec:\n  ike_version: 1\n"))
    assert (c["version"], c["aggressive"], c["dpd_timeout"]) == ("1", "no", "30s")
    assert "mobike" not in c


def test_underlay_narrows_peers_and_selectors(tmp_path: Path) -> None:
    c = conn(tmp_path, ("  role: spoke\n", "  role: spoke\n  underlay: [192.0.2.0/24, 203.0.113.0/24]\n"))
    assert c["remote_addrs"] == ["192.0.2.0/24", "203.0.113.0/24"]
    assert c["children"]["dmvpn"]["local_ts"] == ["198.51.100.2/32[gre]"]
    assert c["children"]["dmvpn"]["remote_ts"] == ["192.0.2.0/24[gre]", "203.0.113.0/24[gre]"]


def test_psk_is_one_shared_ike_secret_for_every_peer(tmp_path: Path) -> None:
    spec = render_ipsec(load_text(example_text("spoke1"), tmp_path).site)
    c = spec.connections["dmvpn"]
    assert c["local"] == {"auth": "psk", "id": "198.51.100.2"}
    assert c["remote"] == {"auth": "psk"}
    (secret,) = spec.secrets
    assert (secret.id, secret.type, secret.data, secret.owners) == ("ike-dmvpn", "IKE", FAKE_SECRETS["DMVPN_PSK"], ())
    assert FAKE_SECRETS["DMVPN_PSK"] not in repr(secret)


def test_dhcp_spoke_is_identified_by_its_fqdn_and_binds_no_address(tmp_path: Path) -> None:
    edits = (
        ("    address: 198.51.100.2/30\n    gateway: 198.51.100.1\n", "    dhcp: true\n"),
        ("  hostname: spoke1\n", "  hostname: spoke1\n  domain: example.net\n"),
    )
    c = conn(tmp_path, *edits)
    assert "local_addrs" not in c
    assert c["local"]["id"] == "spoke1.example.net"


def test_nat_t_can_be_forced(tmp_path: Path) -> None:
    assert conn(tmp_path, ("ipsec:\n", "ipsec:\n  force_encapsulation: true\n"))["encap"] == "yes"


def test_x509_loads_ca_cert_and_key_from_swanctl_dirs(tmp_path: Path) -> None:
    for name in ("ca.pem", "spoke1.pem", "spoke1.key"):
        (tmp_path / name).write_text("PEM")
    os.chmod(tmp_path / "spoke1.key", 0o600)
    x509 = "    x509: {ca: ca.pem, cert: spoke1.pem, key: spoke1.key, remote_id: 'CN=*.dmvpn.example.net'}\n"
    spec = render_ipsec(load_text(example_text("spoke1", (PSK, x509)), tmp_path).site)
    c = spec.connections["dmvpn"]
    assert c["local"] == {"auth": "pubkey", "certs": ["spoke1.pem"]}
    assert c["remote"] == {"auth": "pubkey", "cacerts": ["ca.pem"], "id": "CN=*.dmvpn.example.net"}
    assert spec.secrets == ()
    assert [(f.kind, f.path, f.key_type, f.source) for f in spec.credentials] == [
        ("x509ca", "/etc/swanctl/x509ca/ca.pem", None, str(tmp_path / "ca.pem")),
        ("x509", "/etc/swanctl/x509/spoke1.pem", None, str(tmp_path / "spoke1.pem")),
        ("private", "/etc/swanctl/private/spoke1.key", "any", str(tmp_path / "spoke1.key")),
    ]


def test_swanctl_conf_carries_the_same_connection_and_a_quoted_secret(tmp_path: Path) -> None:
    spec = render_ipsec(load_text(example_text("spoke1"), tmp_path).site)
    text = render_swanctl_conf(spec)
    lines = text.splitlines()
    assert "    dmvpn {" in lines
    assert "        remote_addrs = %any" in lines
    assert "                local_ts = dynamic[gre]" in lines
    assert "                start_action = trap" in lines
    assert "    ike-dmvpn {" in lines
    assert f'        secret = "{FAKE_SECRETS["DMVPN_PSK"]}"' in lines


def test_swanctl_conf_escapes_quotes_in_a_secret(tmp_path: Path) -> None:
    site = load_text(
        example_text("spoke1"), tmp_path, env={**FAKE_SECRETS, "DMVPN_PSK": 'a"b\\c-long-enough-0123456789'}
    )
    assert '        secret = "a\\"b\\\\c-long-enough-0123456789"' in render_swanctl_conf(render_ipsec(site.site))


def test_swanctl_conf_is_secret_and_charon_installs_no_routes(tmp_path: Path) -> None:
    files = {f.path: f for f in render_ipsec_files(render_ipsec(load_text(example_text("hub"), tmp_path).site))}
    swanctl = files["/etc/swanctl/conf.d/appliance.conf"]
    assert (swanctl.mode, swanctl.owner, swanctl.secret) == (0o600, "root", True)
    assert "install_routes = no" in files["/etc/strongswan.d/appliance.conf"].content
