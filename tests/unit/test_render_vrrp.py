"""keepalived.conf: VRRP groups from the site, checked by keepalived's own config test."""

from __future__ import annotations

import subprocess
from pathlib import Path

import jinja2
import pytest
from example_sites import example_text, load_text

from appliance.render.jinja import template
from appliance.render.vrrp import render_vrrp, render_vrrp_files

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
    assert 'notify "/usr/bin/env appliance vrrp-notify"' in fast


def test_v2_whole_seconds_and_no_preempt(tmp_path: Path) -> None:
    v2 = instance(config(tmp_path, TWO_GROUPS), "lan-v2")
    assert "version 2" in v2 and "advert_int 3" in v2 and "nopreempt" in v2
    assert not [line for line in v2 if line.startswith("unicast") or line.startswith("track")]


def test_tunnel_check_script_only_when_a_group_tracks_the_tunnel(tmp_path: Path) -> None:
    assert 'script "/usr/bin/env appliance check-tunnel"' in config(tmp_path, TWO_GROUPS)
    untracked = (TWO_GROUPS[0], TWO_GROUPS[1].replace(" track_tunnel: true,", ""))
    assert "vrrp_script" not in config(tmp_path, untracked)


def test_templates_fail_on_an_undefined_variable() -> None:
    """StrictUndefined: a typo in a template or a missing value is an error, never an empty string."""
    with pytest.raises(jinja2.UndefinedError, match="'router_id' is undefined"):
        template("keepalived.conf.j2").render(groups=[], track_tunnel=False)
    with pytest.raises(jinja2.UndefinedError):
        template("daemons.j2").render()


def test_keepalived_accepts_the_config(tmp_path: Path) -> None:
    """keepalived's own config test, in a throw-away network namespace holding the site's interfaces."""
    conf = tmp_path / "keepalived.conf"
    conf.write_text(config(tmp_path, TWO_GROUPS))
    script = (
        "ip link add eth0 type veth peer name eth0-peer && ip link add eth1 type veth peer name eth1-peer && "
        f"keepalived --config-test -f {conf}"
    )
    r = subprocess.run(
        ["unshare", "--net", "sh", "-c", script], capture_output=True, text=True, timeout=30, check=False
    )
    assert r.returncode == 0, r.stdout + r.stderr
