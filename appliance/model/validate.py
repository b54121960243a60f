"""Loading a site: parse, validate the schema, check what spans fields, resolve secrets.

`load_site` is the one entry point. It reports every problem at once (a `SiteError`), and
returns the warnings for weak but legal choices beside the validated `Site`.
"""

from __future__ import annotations

import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path

from .inputs import SiteInputs, default_env, frr_version_to_validate, read_file
from .loader import Document, Problem, SiteError, load_document, validate_model
from .schema import SecretRef, Site

# Debian 12 ships FRR 8.4, which has no 'ip nhrp authentication' (measured: '% Unknown command').
NHRP_AUTH_MIN_FRR = (10, 1)
MIN_PSK_LENGTH = 20
OSPF_MD5_MAX = 16


@dataclass
class LoadedSite:
    site: Site
    document: Document
    inputs: SiteInputs  # everything the load read (holds secret values)
    warnings: list[Problem] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return Path(self.document.file)


def load_site(
    path: str | Path,
    env: Mapping[str, str] | None = None,
    frr_version: tuple[int, int] | None = None,
    resolve_secrets: bool = True,
) -> LoadedSite:
    """Load, validate and resolve a site file. Raises SiteError listing every problem."""
    doc = load_document(path)
    site = validate_model(doc, Site)
    checker = _Checker(doc, site, default_env() if env is None else env, frr_version or frr_version_to_validate())
    checker.run(resolve_secrets)
    if checker.errors:
        raise SiteError(checker.errors)
    inputs = SiteInputs(str(Path(doc.file).resolve()), doc.raw, checker.env_read, checker.files_read, checker.frr)
    return LoadedSite(site, doc, inputs, checker.warnings)


class _Checker:
    def __init__(self, doc: Document, site: Site, env: Mapping[str, str], frr: tuple[int, int]):
        self.doc, self.site, self.env, self.frr = doc, site, env, frr
        self.errors: list[Problem] = []
        self.warnings: list[Problem] = []
        self.base = Path(doc.file).resolve().parent
        # what the checks read (SiteInputs): the variables the site names, the files it names
        self.env_read: dict[str, str] = {}
        self.files_read: dict[str, tuple[int, bytes]] = {}

    def error(self, path: tuple, message: str, at_key: bool = False) -> None:
        self.errors.append(self.doc.problem(path, message, at_key=at_key))

    def warn(self, path: tuple, message: str) -> None:
        self.warnings.append(self.doc.problem(path, message, "warning"))

    def run(self, resolve_secrets: bool) -> None:
        self.check_interfaces()
        self.check_dmvpn()
        self.check_ipsec(resolve_secrets)
        self.check_routing(resolve_secrets)
        self.check_vrrp()
        self.check_firewall()

    # --- interfaces ---------------------------------------------------------------------------

    def check_interfaces(self) -> None:
        pub = self.site.interfaces.public
        p = ("interfaces", "public")
        if pub.dhcp and pub.address is not None:
            self.error((*p, "address"), "give either 'address' or 'dhcp: true', not both")
        if not pub.dhcp and pub.address is None:
            self.error((*p, "address"), "the public interface needs 'address' or 'dhcp: true'")
        if pub.gateway is not None:
            if pub.dhcp:
                self.error((*p, "gateway"), "with 'dhcp: true' the gateway comes from DHCP")
            elif pub.address is not None and pub.gateway not in pub.address.network:
                self.error((*p, "gateway"), f"gateway {pub.gateway} is not in {pub.address.network}")
        names = {pub.name: p}
        tunnel = self.site.dmvpn.tunnel.name
        for i, lan in enumerate(self.site.interfaces.lan):
            lp = ("interfaces", "lan", i, "name")
            if lan.name in names or lan.name == tunnel:
                self.error(lp, f"interface {lan.name} is already used")
            names[lan.name] = lp
            if lan.address.network.prefixlen == 32:
                self.error(("interfaces", "lan", i, "address"), "a LAN needs a prefix shorter than /32")
            if lan.address.network.overlaps(self.site.dmvpn.tunnel.prefix):
                self.error(
                    ("interfaces", "lan", i, "address"),
                    f"{lan.address.network} overlaps the overlay {self.site.dmvpn.tunnel.prefix}",
                )
            for j, other in enumerate(self.site.interfaces.lan[:i]):
                if lan.address.network.overlaps(other.address.network):
                    self.error(
                        ("interfaces", "lan", i, "address"),
                        f"{lan.address.network} overlaps interfaces.lan[{j}] ({other.address.network})",
                    )
        if tunnel == pub.name:
            self.error(("dmvpn", "tunnel", "name"), f"{tunnel} is the public interface")

    # --- dmvpn --------------------------------------------------------------------------------

    def check_dmvpn(self) -> None:
        d = self.site.dmvpn
        t = d.tunnel
        if t.prefix.prefixlen >= 31:
            self.error(("dmvpn", "tunnel", "prefix"), "the overlay prefix must hold more than two routers")
        if t.address not in t.prefix:
            self.error(("dmvpn", "tunnel", "address"), f"{t.address} is not inside the overlay {t.prefix}")
        elif t.address in (t.prefix.network_address, t.prefix.broadcast_address):
            self.error(("dmvpn", "tunnel", "address"), f"{t.address} is not a host address of {t.prefix}")
        if t.source is not None and t.source != self.site.interfaces.public.name:
            self.error(
                ("dmvpn", "tunnel", "source"),
                f"the tunnel must be sourced from the public interface ({self.site.interfaces.public.name})",
            )
        if t.tcp_mss is not None and t.tcp_mss > t.mtu - 40:
            self.error(
                ("dmvpn", "tunnel", "tcp_mss"),
                f"MSS {t.tcp_mss} does not fit the tunnel MTU {t.mtu} (at most {t.mtu - 40})",
            )
        n = d.nhrp
        if d.role == "spoke" and not n.nhs:
            self.error(("dmvpn", "nhrp", "nhs"), "a spoke needs at least one NHS (its hub)")
        if d.role == "hub" and n.nhs:
            self.error(("dmvpn", "nhrp", "nhs"), "a hub has no NHS; list the hubs on the spokes")
        seen: set[IPv4Address] = set()
        for i, nhs in enumerate(n.nhs):
            if nhs.address not in t.prefix:
                self.error(
                    ("dmvpn", "nhrp", "nhs", i, "address"), f"{nhs.address} is not inside the overlay {t.prefix}"
                )
            if nhs.address == t.address:
                self.error(("dmvpn", "nhrp", "nhs", i, "address"), "this is the spoke's own tunnel address")
            if nhs.address in seen:
                self.error(("dmvpn", "nhrp", "nhs", i, "address"), f"NHS {nhs.address} is listed twice")
            seen.add(nhs.address)
        if n.authentication is not None:
            if self.frr < NHRP_AUTH_MIN_FRR:
                self.error(
                    ("dmvpn", "nhrp", "authentication"),
                    f"FRR {self.frr[0]}.{self.frr[1]} has no 'ip nhrp authentication' command; "
                    f"remove the field (it needs FRR >= {NHRP_AUTH_MIN_FRR[0]}.{NHRP_AUTH_MIN_FRR[1]})",
                )
            else:
                self.warn(
                    ("dmvpn", "nhrp", "authentication"),
                    "NHRP authentication is a cleartext string for Cisco interop, not a security control",
                )
        if d.role == "hub" and n.phase == 3 and self.site.firewall.redirect_rate < 1:
            self.error(("firewall", "redirect_rate"), "phase 3 needs NHRP redirects")

    # --- ipsec --------------------------------------------------------------------------------

    def check_ipsec(self, resolve: bool) -> None:
        ip = self.site.ipsec
        if ip.ike_version == 1:
            self.warn(("ipsec", "ike_version"), "IKEv1 is weaker and slower than IKEv2; use it only for Cisco peers")
        for key in ("ike_proposals", "esp_proposals"):
            props = getattr(ip, key)
            if not props:
                self.error(("ipsec", key), "at least one proposal is needed")
            for i, prop in enumerate(props):
                if not prop or any(not part.isalnum() for part in prop.split("-")):
                    self.error(("ipsec", key, i), f"'{prop}' is not a strongSwan proposal (e.g. aes256gcm16-ecp384)")
        auth = ip.auth
        if auth.psk is not None:
            value = self.secret(auth.psk, ("ipsec", "auth", "psk"), resolve)
            if value is not None and len(value) < MIN_PSK_LENGTH:
                self.warn(
                    ("ipsec", "auth", "psk"),
                    f"the PSK has {len(value)} characters; use at least {MIN_PSK_LENGTH} random ones",
                )
        if auth.x509 is not None:
            x = auth.x509
            for name in ("ca", "cert", "key"):
                self.readable_file(getattr(x, name), ("ipsec", "auth", "x509", name), private=name == "key")
                # Relative to the site file; absolute from here on, so apply works from any directory.
                object.__setattr__(x, name, self.resolve_path(getattr(x, name)))

    def resolve_path(self, p: Path) -> Path:
        return p if p.is_absolute() else self.base / p

    def readable_file(self, p: Path, path: tuple, private: bool = False) -> bytes | None:
        full = self.resolve_path(p)
        try:
            mode, data = read_file(full)
        except FileNotFoundError:
            self.error(path, f"{full}: no such file")
            return None
        except OSError as e:
            self.error(path, f"{full}: {e.strerror}")
            return None
        self.files_read[str(full)] = (mode, data)
        if not stat.S_ISREG(mode):
            self.error(path, f"{full}: not a regular file")
            return None
        if private and mode & stat.S_IROTH:
            self.error(path, f"{full} is world-readable; chmod 600 it")
        return data

    def secret(self, ref: SecretRef, path: tuple, resolve: bool) -> str | None:
        if ref.env is not None:
            value = self.env.get(ref.env)
            if value is None:
                if resolve:
                    self.error((*path, "env"), f"environment variable {ref.env} is not set")
                return None
            self.env_read[ref.env] = value
        else:
            raw = self.readable_file(ref.file, (*path, "file"), private=True)
            if raw is None:
                return None
            try:
                value = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                self.error((*path, "file"), "the secret is not UTF-8 text")
                return None
        if not value:
            self.error(path, f"the secret from {ref.describe()} is empty")
            return None
        ref.resolve(value)
        return value

    # --- routing ------------------------------------------------------------------------------

    def check_routing(self, resolve: bool) -> None:
        r = self.site.routing
        lan_names = {i.name for i in self.site.interfaces.lan}
        if r.ospf is not None:
            o = r.ospf
            if o.dead_interval <= o.hello_interval:
                self.error(("routing", "ospf", "dead_interval"), "must be longer than hello_interval")
            for i, name in enumerate(o.passive or []):
                if name not in lan_names:
                    self.error(("routing", "ospf", "passive", i), f"{name} is not a LAN interface")
            if o.authentication is not None:
                key = self.secret(o.authentication.key, ("routing", "ospf", "authentication", "key"), resolve)
                if key is not None and len(key.encode()) > OSPF_MD5_MAX:
                    self.error(
                        ("routing", "ospf", "authentication", "key"),
                        f"an OSPF MD5 key has at most {OSPF_MD5_MAX} bytes (this one has {len(key.encode())})",
                    )
        if r.bgp is not None:
            b = r.bgp
            if self.site.role == "spoke" and b.summary_only:
                self.error(("routing", "bgp", "summary_only"), "only a hub advertises summaries")
            if self.site.role == "hub" and b.hub_asn is not None:
                self.error(("routing", "bgp", "hub_asn"), "hub_asn is for spokes; a hub uses 'asn'")
            if b.holdtime < 3 * b.keepalive:
                self.error(("routing", "bgp", "holdtime"), "must be at least three keepalives")
            if b.password is not None:
                self.secret(b.password, ("routing", "bgp", "password"), resolve)
        if r.eigrp is not None and not r.eigrp.experimental:
            self.error(
                ("routing", "eigrp", "experimental"),
                "FRR's eigrpd is incomplete (no authentication, no stub); set 'experimental: true' to use it",
            )
        for i, route in enumerate(r.static):
            if route.interface is not None and route.interface not in lan_names | {
                self.site.interfaces.public.name,
                self.site.dmvpn.tunnel.name,
            }:
                self.error(("routing", "static", i, "interface"), f"{route.interface} is not an interface of this site")

    # --- vrrp ---------------------------------------------------------------------------------

    def check_vrrp(self) -> None:
        seen: dict[tuple[str, int], int] = {}
        names: set[str] = set()
        for i, g in enumerate(self.site.vrrp.groups):
            p = ("vrrp", "groups", i)
            if g.name in names:
                self.error((*p, "name"), f"group name {g.name} is used twice")
            names.add(g.name)
            lan = self.site.lan(g.interface)
            if lan is None:
                self.error((*p, "interface"), f"{g.interface} is not a LAN interface")
            if (g.interface, g.vrid) in seen:
                self.error(
                    (*p, "vrid"),
                    f"VRID {g.vrid} is already used on {g.interface} (vrrp.groups[{seen[g.interface, g.vrid]}])",
                )
            seen[g.interface, g.vrid] = i
            if g.advert_interval < 1 and g.version == 2:
                self.error((*p, "advert_interval"), "sub-second intervals need VRRP version 3")
            elif g.version == 2 and g.advert_interval != int(g.advert_interval):
                self.error((*p, "advert_interval"), "VRRPv2 intervals are whole seconds")
            if g.version == 3 and round(g.advert_interval * 100) != g.advert_interval * 100:
                self.error((*p, "advert_interval"), "VRRPv3 intervals are in hundredths of a second")
            if lan is not None:
                for j, vip in enumerate(g.virtual_addresses):
                    if vip.ip not in lan.address.network:
                        self.error(
                            (*p, "virtual_addresses", j),
                            f"{vip.ip} is not in {g.interface}'s subnet {lan.address.network}",
                        )
                    elif vip.ip == lan.address.ip:
                        self.error((*p, "virtual_addresses", j), f"{vip.ip} is {g.interface}'s own address")
                for j, peer in enumerate(g.unicast_peers):
                    if peer not in lan.address.network:
                        self.error((*p, "unicast_peers", j), f"{peer} is not in {lan.address.network}")
            for j, name in enumerate(g.track_interfaces):
                if name not in {i.name for i in self.site.interfaces.lan} | {self.site.interfaces.public.name}:
                    self.error((*p, "track_interfaces", j), f"{name} is not an interface of this site")
                elif name == g.interface:
                    # keepalived -t rejects it; the group already fails over when its own link goes down
                    self.error((*p, "track_interfaces", j), f"{name} is the group's own interface (tracked already)")

    # --- firewall -----------------------------------------------------------------------------

    def check_firewall(self) -> None:
        for i, rule in enumerate(self.site.firewall.tunnel.rules):
            if rule.port is not None and rule.protocol not in ("tcp", "udp"):
                self.error(("firewall", "tunnel", "rules", i, "port"), "a port needs protocol tcp or udp")
        for i, rule in enumerate(self.site.firewall.public.allow):
            if rule.protocol == "udp" and rule.port in (500, 4500):
                self.error(("firewall", "public", "allow", i, "port"), "IKE ports are always open")
