"""NTP servers for systemd-timesyncd: a drop-in, so Debian's own timesyncd.conf stays untouched.

Time matters to a DMVPN router beyond logs: X.509 validity and IKE lifetimes depend on it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .spec import RenderedFile

if TYPE_CHECKING:  # the schema is pydantic: typing only (see render/__init__.py)
    from ..model.schema import Site

TIMESYNCD_PATH = "/etc/systemd/timesyncd.conf.d/appliance.conf"


def render_timesyncd_file(site: Site) -> RenderedFile | None:
    """The drop-in naming the site's NTP servers; None when the site names none."""
    if not site.system.ntp:
        return None
    servers = " ".join(site.system.ntp)
    return RenderedFile(TIMESYNCD_PATH, f"# Written by appliance from the site file.\n[Time]\nNTP={servers}\n")
