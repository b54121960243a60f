"""strongSwan: transport-mode trap policies protecting GRE, as VICI messages and as swanctl.conf.

The design is fixed (measured in the lab recipe): no 'tunnel protection' in nhrpd (stock
strongSwan 5.9.8 lacks the events it needs); instead one connection with wildcard peers
(`remote_addrs = %any`, `dynamic[gre]` selectors) whose CHILD_SA is a trap, so the first GRE
packet to any peer triggers IKE and cleartext GRE can never leave or enter.

The VICI dicts are the single source of truth; swanctl.conf is serialised from them so that a
plain `swanctl --load-all` after a reboot restores the same state.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from .spec import CredentialFile, IpsecSpec, RenderedFile, SharedSecret

if TYPE_CHECKING:  # the schema is pydantic: typing only (see render/__init__.py)
    from ..model.schema import Site

CONNECTION = "dmvpn"
CHILD = "dmvpn"
# Every CHILD_SA of the connection shares one reqid. Otherwise an SA charon opens from the trap gets
# the trap's reqid and one a peer opens gets a new one; when two spokes open at once (measured after
# a tunnel was recreated) both pairs stay up, the kernel's policy names only one reqid and ESP
# arriving on the other is dropped (XfrmInTmplMismatch): a black hole between those two spokes.
REQID = 1
PSK_ID = "ike-dmvpn"  # swanctl.conf: a secrets section named ike<suffix> is an IKE secret
SWANCTL_CONF_PATH = "/etc/swanctl/conf.d/appliance.conf"
CHARON_CONF_PATH = "/etc/strongswan.d/appliance.conf"
SWANCTL_DIR = PurePosixPath("/etc/swanctl")
# Transport-mode SAs must not make charon add routes into table 220 (lab recipe: install_routes = no).
CHARON_CONF = """\
# Written by appliance. Transport-mode GRE protection needs no routes from charon.
charon {
    install_routes = no
}
"""


def _seconds(value: int) -> str:
    return f"{value}s"


def local_identity(site: Site) -> str:
    """Own NBMA address, or the FQDN when the address comes from DHCP."""
    public = site.interfaces.public
    if public.address is not None:
        return str(public.address.ip)
    s = site.system
    return f"{s.hostname}.{s.domain}" if s.domain else s.hostname


def render_ipsec(site: Site) -> IpsecSpec:
    ip = site.ipsec
    public = site.interfaces.public
    underlay = site.dmvpn.underlay
    conn: dict[str, Any] = {"version": str(ip.ike_version)}
    if public.address is not None:
        conn["local_addrs"] = [str(public.address.ip)]
    conn["remote_addrs"] = [str(net) for net in underlay] if underlay else ["%any"]
    conn["proposals"] = list(ip.ike_proposals)
    if ip.ike_version == 1:
        conn["aggressive"] = "no"  # main mode: aggressive mode exposes a PSK hash to offline guessing
    else:
        conn["mobike"] = "no"  # the NBMA address is the GRE endpoint; it must not wander
    if ip.force_encapsulation:
        conn["encap"] = "yes"
    conn["dpd_delay"] = _seconds(ip.dpd.delay)
    if ip.ike_version == 1:
        conn["dpd_timeout"] = _seconds(ip.dpd.timeout)
    conn["rekey_time"] = _seconds(ip.ike_lifetime)
    # A rebooted spoke re-registers with a new IKE_SA: drop its old one at once, not at DPD timeout.
    conn["unique"] = "replace"

    secrets: tuple[SharedSecret, ...] = ()
    credentials: tuple[CredentialFile, ...] = ()
    auth = ip.auth
    if auth.psk is not None:
        conn["local"] = {"auth": "psk", "id": local_identity(site)}
        conn["remote"] = {"auth": "psk"}
        # No owners: with %any peers the one key serves every peer identity.
        secrets = (SharedSecret(id=PSK_ID, type="IKE", data=auth.psk.reveal()),)
    else:
        x = auth.x509
        local: dict[str, Any] = {"auth": "pubkey", "certs": [x.cert.name]}
        if x.id is not None:
            local["id"] = x.id
        remote: dict[str, Any] = {"auth": "pubkey", "cacerts": [x.ca.name]}
        if x.remote_id is not None:
            remote["id"] = x.remote_id
        conn["local"], conn["remote"] = local, remote
        credentials = (
            CredentialFile("x509ca", str(SWANCTL_DIR / "x509ca" / x.ca.name), source=str(x.ca)),
            CredentialFile("x509", str(SWANCTL_DIR / "x509" / x.cert.name), source=str(x.cert)),
            CredentialFile("private", str(SWANCTL_DIR / "private" / x.key.name), key_type="any", source=str(x.key)),
        )

    if underlay and public.address is not None:
        local_ts = [f"{public.address.ip}/32[gre]"]  # the lab's proven range form
    else:
        local_ts = ["dynamic[gre]"]
    child = {
        "mode": "transport",
        "local_ts": local_ts,
        "remote_ts": [f"{net}[gre]" for net in underlay] if underlay else ["dynamic[gre]"],
        "esp_proposals": list(ip.esp_proposals),
        "start_action": "trap",
        "reqid": str(REQID),
        "dpd_action": ip.dpd.action,
        "rekey_time": _seconds(ip.child_lifetime),
    }
    if site.role == "spoke":
        # A peer that deletes our SA (its charon stopping, an operator's terminate) may keep its NHRP
        # entry for us; if we sit behind NAT it cannot open IKE towards us again (measured: a black
        # hole until the entry expires). So the spoke re-initiates at once; one try, then the trap.
        child["close_action"] = "start"
    conn["children"] = {CHILD: child}
    return IpsecSpec(connections={CONNECTION: conn}, secrets=secrets, credentials=credentials)


# --- swanctl.conf -----------------------------------------------------------------------------

_PLAIN = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789%.:/[]-_@=*")


def _value(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ", ".join(_value(v) for v in value)
    text = str(value)
    if text and set(text) <= _PLAIN:
        return text
    return _quoted(text)


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _section(name: str, body: dict[str, Any], depth: int) -> list[str]:
    pad = "    " * depth
    out = [f"{pad}{name} {{"]
    for key, value in body.items():
        if isinstance(value, dict):
            out += _section(key, value, depth + 1)
        else:
            # A secret is always quoted, whatever characters it happens to contain.
            text = _quoted(str(value)) if key == "secret" else _value(value)
            out.append(f"{pad}    {key} = {text}")
    out.append(f"{pad}}}")
    return out


def render_swanctl_conf(spec: IpsecSpec) -> str:
    """swanctl.conf text for the same connections and secrets (certs/keys live in their dirs)."""
    out = ["# Written by appliance from the site file; changes here are overwritten.", "connections {"]
    for name, conn in spec.connections.items():
        out += _section(name, conn, 1)
    out.append("}")
    if spec.secrets:
        out.append("secrets {")
        for s in spec.secrets:
            body: dict[str, Any] = {"secret": s.data}
            for i, owner in enumerate(s.owners, 1):
                body[f"id-{i}"] = owner
            out += _section(s.id if s.id.startswith("ike") else f"ike-{s.id}", body, 1)
        out.append("}")
    return "\n".join(out) + "\n"


def render_ipsec_files(spec: IpsecSpec) -> tuple[RenderedFile, ...]:
    return (
        RenderedFile(SWANCTL_CONF_PATH, render_swanctl_conf(spec), mode=0o600, secret=True),
        RenderedFile(CHARON_CONF_PATH, CHARON_CONF),
    )
