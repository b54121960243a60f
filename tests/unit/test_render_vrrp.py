"""keepalived.conf: VRRP groups from the site, checked by keepalived's own config test."""

from __future__ import annotations

import subprocess
from pathlib import Path

import jinja2
import pytest
from example_sites import example_text, load_text

from appliance.render.jinja import template
from appliance.render.vrrp import TUNNEL_CHECK_PATH, render_vrrp, render_vrrp_files

TWO_GROUPS = (
    "ipsec:\n",
    "vrrp:\n  groups:\n"
    "    - {name: lan-fast, interface: eth1, vrid: 10, priority: 150, advert_interval: 0.05,\n"
    "       virtual_addresses: [10.0.1.254/24], track_tunnel: true, unicast_peers: [10.0.1.2],\n"
    "       track_interfaces: [eth0], preempt_delay: 30}\n"
    "    - {name: lan-v2, interface: eth1, vrid: 11, version: 2, advert_interval: 3, preempt: false,\n"
    "       virtual_addresses: [10.0.1.253/24]}\n"
    "ipsec:\n",
)


def config(tmp_path: Path, *edits: tuple[str, str]) -> str | None:
    return render_vrrp(load_text(example_text("spoke1", *edits), tmp_path).site).config


def instance(text: str, name: str) -> list[str]:
    lines = text.splitlines()
    start = lines.index(f"vrrp_instance {name} {{")
    end = lines.index("}", start)
    return [line.strip() for line in lines[start + 1 : end]]


def test_no_groups_no_keepalived(tmp_path: Path) -> None:
    assert config(tmp_path) is None
    assert render_vrrp_files(render_vrrp(load_text(example_text("spoke1"), tmp_path).site)) == ()


def test_sub_second_v3_advertisements_and_tunnel_tracking(tmp_path: Path) -> None:
    fast = instance(config(tmp_path, TWO_GROUPS), "lan-fast")
    assert fast[:7] == [
        "# BACKUP everywhere: priority elects the master, and a rebooted router never claims it blindly.",
        "state BACKUP",
        "interface eth1",
        "virtual_router_id 10",
        "version 3",
        "priority 150",
        "advert_int 0.05",
    ]
    assert "preempt_delay 30" in fast
    assert "unicast_src_ip 10.0.1.1" in fast and "10.0.1.2" in fast
    assert "10.0.1.254/24 dev eth1" in fast
    assert "chk_dmvpn_tunnel" in fast and "eth0" in fast
    assert not [line for line in fast if line.startswith("notify")]  # states go through the FIFO, in order


def test_v2_whole_seconds_and_no_preempt(tmp_path: Path) -> None:
    v2 = instance(config(tmp_path, TWO_GROUPS), "lan-v2")
    assert "version 2" in v2 and "advert_int 3" in v2 and "nopreempt" in v2
    assert not [line for line in v2 if line.startswith("unicast") or line.startswith("track")]


def test_tunnel_check_script_only_when_a_group_tracks_the_tunnel(tmp_path: Path) -> None:
    tracked = render_vrrp(load_text(example_text("spoke1", TWO_GROUPS), tmp_path).site)
    assert f'script "{TUNNEL_CHECK_PATH}"' in tracked.config
    script = render_vrrp_files(tracked)[2]
    assert (script.path, script.mode, script.content) == (TUNNEL_CHECK_PATH, 0o755, tracked.tunnel_check)
    untracked = (TWO_GROUPS[0], TWO_GROUPS[1].replace(" track_tunnel: true,", ""))
    assert "vrrp_script" not in config(tmp_path, untracked)
    assert [
        f.path for f in render_vrrp_files(render_vrrp(load_text(example_text("spoke1", untracked), tmp_path).site))
    ] == ["/etc/keepalived/keepalived.conf", "/etc/keepalived/appliance-vrrp-states"]


# `ip xfrm state list proto esp mode transport` as iproute2 6.1 prints it (key material made up)
XFRM_SA = """src 198.51.100.10 dst 192.0.2.2
\tproto esp spi 0xc55d6f81 reqid 1 mode transport
\treplay-window 0
\taead rfc4106(gcm(aes)) 0x00112233445566778899aabbccddeeff0011223344556677 128
\tanti-replay context: seq 0x0, oseq 0x393, bitmap 0x00000000
\tsel src 0.0.0.0/0 dst 0.0.0.0/0
"""
# what a trap policy's acquire leaves while IKE is still negotiating: no SA yet
XFRM_ACQUIRE = """src 198.51.100.10 dst 192.0.2.2
\tproto esp spi 0x00000000 reqid 1 mode transport
\treplay-window 0
\tsel src 198.51.100.10/32 dst 192.0.2.2/32 proto gre
"""


@pytest.mark.parametrize(
    "role, link_up, xfrm, ok",
    [
        ("spoke1", True, XFRM_SA, True),
        ("spoke1", False, XFRM_SA, False),  # tunnel interface down (or deleted)
        ("spoke1", True, "", False),  # charon stopped: it removed its SAs
        ("spoke1", True, XFRM_ACQUIRE, False),  # IKE still negotiating
        ("spoke1", True, XFRM_ACQUIRE + XFRM_SA, True),  # one SA up, another being negotiated
        ("hub", True, "", True),  # a hub carries traffic without an SA of its own
        ("hub", False, "", False),
    ],
)
def test_tunnel_check_script_verdicts(tmp_path: Path, role: str, link_up: bool, xfrm: str, ok: bool) -> None:
    """The rendered script run by /bin/sh, with `ip` replaced by one printing fixed output."""
    check = render_vrrp(load_text(example_text(role), tmp_path).site).tunnel_check
    tools = tmp_path / "bin"
    tools.mkdir()
    up_line = "5: dmvpn0@eth0: <NOARP,UP,LOWER_UP> mtu 1400 qdisc noqueue state UNKNOWN" if link_up else ""
    (tools / "ip").write_text(
        "#!/bin/sh\n"
        'case "$*" in\n'
        f"  'link show dev dmvpn0 up') printf '%s' '{up_line}' ;;\n"
        f"  'xfrm state list proto esp mode transport') cat <<'EOF'\n{xfrm}EOF\n ;;\n"
        '  *) echo "unexpected: ip $*" >&2; exit 2 ;;\n'
        "esac\n"
    )
    (tools / "ip").chmod(0o755)
    script = tmp_path / "check"
    script.write_text(check)
    proc = subprocess.run(
        ["/bin/sh", str(script)], env={"PATH": f"{tools}:/usr/bin:/bin"}, capture_output=True, text=True, check=False
    )
    assert (proc.returncode == 0) == ok, proc.stderr
    assert "unexpected" not in proc.stderr and "0x0011" not in proc.stdout + proc.stderr
    assert ok or proc.stderr.strip() in ("tunnel dmvpn0 is down", "no IPsec SA installed")


def test_templates_fail_on_an_undefined_variable() -> None:
    """StrictUndefined: a typo in a template or a missing value is an error, never an empty string."""
    with pytest.raises(jinja2.UndefinedError, match="'router_id' is undefined"):
        template("keepalived.conf.j2").render(groups=[], track_tunnel=False)
    with pytest.raises(jinja2.UndefinedError):
        template("daemons.j2").render()


def test_keepalived_accepts_the_config(tmp_path: Path) -> None:
    """keepalived's own config test, in throw-away network and mount namespaces holding the site's
    interfaces and the tunnel check (keepalived disables a track script it cannot find)."""
    spec = render_vrrp(load_text(example_text("spoke1", TWO_GROUPS), tmp_path).site)
    conf = tmp_path / "keepalived.conf"
    conf.write_text(spec.config)
    check = tmp_path / "check"
    check.write_text(spec.tunnel_check)
    script = (
        "ip link add eth0 type veth peer name eth0-peer && ip link add eth1 type veth peer name eth1-peer && "
        f"mount --make-rprivate / && mount -t tmpfs tmpfs {Path(TUNNEL_CHECK_PATH).parent} && "
        f"install -m 0755 {check} {TUNNEL_CHECK_PATH} && keepalived --config-test -f {conf}"
    )
    r = subprocess.run(
        ["unshare", "--net", "--mount", "sh", "-c", script], capture_output=True, text=True, timeout=30, check=False
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_state_reader_records_keepalived_fifo_lines_in_order(tmp_path: Path) -> None:
    """The rendered reader run by /bin/sh on a real FIFO, as keepalived runs it (the FIFO last)."""
    import json
    import os

    from appliance import status
    from appliance.render.vrrp import VRRP_STATE_DIR, render_states_script

    assert Path(VRRP_STATE_DIR) == status.VRRP_STATE_DIR  # what the reader writes is what `show vrrp` reads
    states = tmp_path / "vrrp"
    script = tmp_path / "reader"
    script.write_text(render_states_script(str(states)))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "logger").write_text(f'#!/bin/sh\necho "$*" >> {tmp_path}/log\n')
    (tools / "logger").chmod(0o755)
    reader = subprocess.Popen(
        ["/bin/sh", str(script), "--as-keepalived-passes-it", str(fifo)],
        env={"PATH": f"{tools}:/usr/bin:/bin"},
    )
    with open(fifo, "w") as keepalived:
        keepalived.write('INSTANCE "hublan" BACKUP 200\nINSTANCE "hublan" MASTER 200\n')
        keepalived.write('INSTANCE "hublan" MASTER_RX_LOWER_PRI 200\n')  # an event, not a state
        keepalived.write('INSTANCE "../evil" MASTER 1\nINSTANCE "lan" FAULT x\nGROUP "pair" BACKUP 0\n')
    assert reader.wait(timeout=30) == 0  # keepalived closing the FIFO ends it
    hublan = json.loads((states / "hublan.json").read_text())
    assert (hublan["state"], hublan["priority"], hublan["kind"]) == ("MASTER", 200, "INSTANCE")  # the newer one
    assert json.loads((states / "lan.json").read_text())["priority"] == 0  # not a number: 0
    assert sorted(p.name for p in states.iterdir()) == ["hublan.json", "lan.json", "pair.json"]  # no ../evil
    assert (tmp_path / "log").read_text().splitlines()[:2] == [
        "-t appliance vrrp instance hublan: BACKUP (priority 200)",
        "-t appliance vrrp instance hublan: MASTER (priority 200)",
    ]
    with pytest.MonkeyPatch.context() as m:
        m.setattr(status, "VRRP_STATE_DIR", states)
        assert [g["name"] for g in status.vrrp()["groups"]] == ["hublan", "lan", "pair"]
