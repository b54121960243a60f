"""NTP servers for systemd-timesyncd: a drop-in, so Debian's own timesyncd.conf stays untouched.

Time matters to a DMVPN router beyond logs: X.509 validity and IKE lifetimes depend on it.
"""

from __future__ import annotations

from ..model.schema import Site
from .spec import RenderedFile

TIMESYNCD_PATH = "/etc/systemd/timesyncd.conf.d/appliance.conf"


def render_timesyncd_file(site: Site) -> RenderedFile | None:
    """The drop-in naming the site's NTP servers; None when the site names none."""
    if not site.system.ntp:
        return None
    servers = " ".join(site.system.ntp)
    return RenderedFile(TIMESYNCD_PATH, f"# Written by appliance from the site file.\n[Time]\nNTP={servers}\n")
