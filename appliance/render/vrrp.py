"""keepalived.conf: one VRRP instance per group, from templates/keepalived.conf.j2, the reader of
keepalived's state changes (templates/appliance-vrrp-states.j2) and the tunnel check keepalived
runs for groups with `track_tunnel` (templates/appliance-check-tunnel.j2)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .jinja import template
from .spec import RenderedFile, VrrpSpec

if TYPE_CHECKING:  # the schema is pydantic: typing only (see render/__init__.py)
    from ..model.schema import Site, VrrpGroup

KEEPALIVED_CONF_PATH = "/etc/keepalived/keepalived.conf"
TUNNEL_SCRIPT = "chk_dmvpn_tunnel"
# A shell script, not `appliance check-tunnel` itself: keepalived runs it every 2 s (see the template).
TUNNEL_CHECK_PATH = "/etc/keepalived/appliance-check-tunnel"
# keepalived writes each state change to the FIFO and runs the reader once, with the FIFO's path.
NOTIFY_FIFO = "/run/appliance-vrrp.fifo"  # keepalived creates it (not its directory)
STATES_SCRIPT_PATH = "/etc/keepalived/appliance-vrrp-states"
# Where the reader records each instance's state (appliance/status.py reads it; a test ties the two).
VRRP_STATE_DIR = "/run/appliance/vrrp"


def _advert_int(g: VrrpGroup) -> str:
    # v3 takes hundredths of a second ('0.05'); v2 whole seconds.
    return f"{g.advert_interval:.2f}".rstrip("0").rstrip(".") if g.version == 3 else str(int(g.advert_interval))


def render_tunnel_check(site: Site) -> str:
    """The shell script that exits 0 while the tunnel carries traffic (rendered for every site)."""
    return template("appliance-check-tunnel.j2").render(tunnel=site.dmvpn.tunnel.name, spoke=site.role == "spoke")


def render_vrrp(site: Site) -> VrrpSpec:
    groups = site.vrrp.groups
    tunnel_check = render_tunnel_check(site)
    if not groups:
        return VrrpSpec(config=None, tunnel_check=tunnel_check)
    view = []
    for g in groups:
        lan = site.lan(g.interface)
        view.append(
            {
                "name": g.name,
                "interface": g.interface,
                "vrid": g.vrid,
                "version": g.version,
                "priority": g.priority,
                "advert_int": _advert_int(g),
                "preempt": g.preempt,
                "preempt_delay": g.preempt_delay,
                "unicast_src_ip": str(lan.address.ip) if lan is not None else None,
                "unicast_peers": [str(p) for p in g.unicast_peers],
                "virtual_addresses": [str(v) for v in g.virtual_addresses],
                "track_interfaces": list(g.track_interfaces),
                "track_tunnel": g.track_tunnel,
            }
        )
    config = template("keepalived.conf.j2").render(
        router_id=site.system.hostname,
        groups=view,
        track_tunnel=any(g.track_tunnel for g in groups),
        tunnel_script=TUNNEL_SCRIPT,
        tunnel_check_command=TUNNEL_CHECK_PATH,
        notify_fifo=NOTIFY_FIFO,
        notify_fifo_script=STATES_SCRIPT_PATH,
    )
    return VrrpSpec(config=config, tunnel_check=tunnel_check, track_tunnel=any(g.track_tunnel for g in groups))


def render_states_script(state_dir: str = VRRP_STATE_DIR) -> str:
    return template("appliance-vrrp-states.j2").render(state_dir=state_dir)


def vrrp_paths(spec: VrrpSpec) -> tuple[str, ...]:
    """The paths of render_vrrp_files(spec), in its order, without rendering (the driver's no-op diff)."""
    if spec.config is None:
        return ()
    paths = (KEEPALIVED_CONF_PATH, STATES_SCRIPT_PATH)
    return (*paths, TUNNEL_CHECK_PATH) if spec.track_tunnel and spec.tunnel_check is not None else paths


def render_vrrp_files(spec: VrrpSpec) -> tuple[RenderedFile, ...]:
    if spec.config is None:
        return ()
    # keepalived's script security: scripts root-owned, writable by root only
    files = (
        RenderedFile(KEEPALIVED_CONF_PATH, spec.config),
        RenderedFile(STATES_SCRIPT_PATH, render_states_script(), 0o755),
    )
    if spec.track_tunnel and spec.tunnel_check is not None:
        files += (RenderedFile(TUNNEL_CHECK_PATH, spec.tunnel_check, 0o755),)
    return files
