"""`appliance show dmvpn` from nhrpd's JSON as FRR 8.4.4 prints it (recorded in the lab)."""

from __future__ import annotations

from appliance import show, status

# vtysh -c 'show ip nhrp nhs json' on a spoke before and after registration, and a hub's cache.
NHS_UNREGISTERED = {"interface": "dmvpn0", "fqdn": "192.0.2.2", "nbma": "192.0.2.2", "protocol": "(unspec)"}
NHS_REGISTERED = {**NHS_UNREGISTERED, "protocol": "172.16.0.1"}
CACHE = [
    {
        "interface": "dmvpn0",
        "type": "local",
        "protocol": "172.16.0.1",
        "nbma": "192.0.2.2",
        "claimed_nbma": "192.0.2.2",
        "used": False,
    },
    {
        "interface": "dmvpn0",
        "type": "dynamic",
        "protocol": "172.16.0.13",
        "nbma": "203.0.113.2",
        "claimed_nbma": "192.168.100.2",
        "used": True,
    },
    {
        "interface": "dmvpn0",
        "type": "dynamic",
        "protocol": "172.16.0.14",
        "nbma": "203.0.113.2",
        "claimed_nbma": "192.168.100.2",
        "used": False,
    },
]


def fake_vtysh(nhs, cache):
    def answer(*commands):
        table = {"show ip nhrp nhs json": nhs, "show ip nhrp cache json": cache, "show ip nhrp shortcut json": []}
        return [{"attr": {"entriesCount": len(table[c])}, "table": table[c]} for c in commands]

    return answer


def test_registration_is_read_from_the_nhs_protocol_address(monkeypatch) -> None:
    monkeypatch.setattr(status, "vtysh_json", fake_vtysh([NHS_UNREGISTERED], []))
    assert status.nhrp()["nhs"][0]["registered"] is False
    monkeypatch.setattr(status, "vtysh_json", fake_vtysh([NHS_REGISTERED], []))
    assert status.nhrp()["nhs"][0]["registered"] is True


def test_hub_view_flags_nat_and_two_spokes_behind_one_address(monkeypatch) -> None:
    monkeypatch.setattr(status, "vtysh_json", fake_vtysh([], CACHE))
    data = status.nhrp()
    assert data["warnings"] == [
        "2 spokes registered from NBMA 203.0.113.2: spokes behind one PAT address cannot all work "
        "(Linux transport-mode IPsec selects SAs by address, not port)"
    ]
    text = show.format_dmvpn(data)
    row = next(line for line in text.splitlines() if "172.16.0.13" in line).split()
    assert row == ["dmvpn0", "172.16.0.13", "203.0.113.2", "192.168.100.2", "yes", "dynamic", "used"]
    assert text.splitlines()[-1].startswith("warning: 2 spokes registered from NBMA 203.0.113.2")


def test_vtysh_answers_are_split_around_frr_84s_text_header(monkeypatch) -> None:
    """FRR 8.4.4 prints 'Type Prefix Via Identity' before the JSON of 'show ip nhrp shortcut json'."""
    header = "Type     Prefix                   Via                      Identity"
    out = '{"table":[]}\n' + header + '\n{"table":[{"prefix":"10.0.2.0/24"}]}\n'
    docs, text = status._split_json(out)
    assert docs == [{"table": []}, {"table": [{"prefix": "10.0.2.0/24"}]}]
    assert text == [header]
    docs, text = status._split_json("% Unknown command: show ip nhrp foo json\n")
    assert docs == [] and text == ["% Unknown command: show ip nhrp foo json"]


def test_a_spokes_own_resolutions_sharing_an_nbma_raise_no_warning(monkeypatch) -> None:
    """Measured in the demo: spoke1 resolved spoke2 (172.16.0.12) and host2 (10.0.2.10), same NBMA."""
    resolutions = [
        {"interface": "dmvpn0", "type": "dynamic", "protocol": "172.16.0.12", "nbma": "198.51.100.6"},
        {"interface": "dmvpn0", "type": "dynamic", "protocol": "10.0.2.10", "nbma": "198.51.100.6"},
    ]
    monkeypatch.setattr(status, "vtysh_json", fake_vtysh([NHS_REGISTERED], resolutions))
    assert status.dmvpn()["warnings"] == []


def test_a_shortcut_the_supervisor_sends_through_the_hub_says_so(monkeypatch) -> None:
    shortcuts = [{"type": "dynamic", "prefix": "10.0.4.0/24", "via": "172.16.0.14", "identity": ""}]
    monkeypatch.setattr(status, "vtysh_json", fake_vtysh([NHS_REGISTERED], []))
    monkeypatch.setattr(status, "_nat_pair_routes", lambda: {"10.0.4.0/24": "172.16.0.1"})
    data = {**status.dmvpn(), "shortcuts": shortcuts}
    assert data["through_hub"] == [{"prefix": "10.0.4.0/24", "via": "172.16.0.1"}]
    row = next(line for line in show.format_dmvpn(data).splitlines() if "10.0.4.0/24" in line)
    assert row.rstrip().endswith("via hub 172.16.0.1 (both behind NAT)"), row
    monkeypatch.setattr(status, "_nat_pair_routes", lambda: {})
    row = next(
        line for line in show.format_dmvpn({**status.dmvpn(), "shortcuts": shortcuts}).splitlines() if "10.0.4" in line
    )
    assert row.split()[-1] == "direct"
