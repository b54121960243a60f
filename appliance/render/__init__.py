"""Pure rendering: the validated site model -> the desired state of every subsystem (spec.py).

Render modules import the schema for typing only, and jinja2 when a template is first used
(jinja.py): the drivers import them for their paths on every apply, which needs neither.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .firewall import render_firewall, render_firewall_files
from .frr import render_frr, render_frr_files
from .ipsec import render_ipsec, render_ipsec_files
from .netlink import render_netlink
from .spec import DesiredState
from .sysctl import render_sysctl, render_sysctl_file
from .timesync import render_timesyncd_file
from .vrrp import render_vrrp, render_vrrp_files

if TYPE_CHECKING:  # the schema is pydantic: typing only (see render/__init__.py)
    from ..model.schema import Site

__all__ = ["render_site", "site_secrets"]


def site_secrets(site: Site) -> frozenset[str]:
    """Every resolved secret value of the site, for callers to redact from any output."""
    refs = [site.ipsec.auth.psk]
    r = site.routing
    if r.ospf is not None and r.ospf.authentication is not None:
        refs.append(r.ospf.authentication.key)
    if r.bgp is not None:
        refs.append(r.bgp.password)
    return frozenset(ref.reveal() for ref in refs if ref is not None)


def render_site(site: Site) -> DesiredState:
    """Render every subsystem; no I/O beyond the package's own templates (loaded once)."""
    sysctl = render_sysctl(site)
    frr = render_frr(site)
    ipsec = render_ipsec(site)
    vrrp = render_vrrp(site)
    firewall = render_firewall(site)
    files = (
        render_sysctl_file(site, sysctl),
        *render_firewall_files(firewall),
        *render_ipsec_files(ipsec),
        *render_frr_files(frr),
        *render_vrrp_files(vrrp),
    )
    timesyncd = render_timesyncd_file(site)
    if timesyncd is not None:
        files += (timesyncd,)
    return DesiredState(
        hostname=site.system.hostname,
        sysctl=sysctl,
        netlink=render_netlink(site),
        firewall=firewall,
        ipsec=ipsec,
        frr=frr,
        vrrp=vrrp,
        files=tuple(sorted(files, key=lambda f: f.path)),
        secrets=site_secrets(site),
        role=site.role,
    )
