"""The site.yaml schema: one router (a DMVPN hub or spoke) described as data.

Types only; checks that span several fields live in `validate.py` so that all of them can be
reported at once with their marks. Field names are the YAML keys (snake_case).
"""

from __future__ import annotations

import re
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, PrivateAttr, SecretStr, model_validator

InterfaceName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.\-]{1,15}$")]
HOSTNAME_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9\-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9\-]{1,63})*$"
Hostname = Annotated[str, Field(max_length=253, pattern=HOSTNAME_PATTERN)]


def _address_or_hostname(value: object) -> IPv4Address | str:
    """An IPv4Address when it is one (renderers test for it), else a DNS name; one clear error otherwise."""
    if isinstance(value, IPv4Address):
        return value
    text = str(value)
    try:
        return IPv4Address(text)
    except ValueError:
        pass
    # '192.0.2.300' matches the hostname pattern but is a mistyped address, not a name.
    if len(text) > 253 or not re.match(HOSTNAME_PATTERN, text) or all(p.isdigit() for p in text.split(".")):
        raise ValueError(f"{text!r} is neither an IPv4 address nor a hostname")
    return text


AddressOrHostname = Annotated[IPv4Address | str, PlainValidator(_address_or_hostname)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SecretRef(Strict):
    """Where a secret comes from: a file (relative paths are relative to the site file) or an
    environment variable. Never inline: site files get copied, mailed and committed."""

    holds_secret: ClassVar[bool] = True  # the loader never echoes input found under a SecretRef

    file: Path | None = None
    env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] | None = None
    # Filled by the loader after validation; private, so a site file can never set it inline.
    _value: SecretStr | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _one_source(self) -> SecretRef:
        if (self.file is None) == (self.env is None):
            raise ValueError("give exactly one of 'file' or 'env'")
        return self

    def reveal(self) -> str:
        if self._value is None:
            raise RuntimeError("secret not resolved (load the site with load_site)")
        return self._value.get_secret_value()

    def resolve(self, value: str) -> None:
        """The loader's hook: the model is frozen for everyone else."""
        self._value = SecretStr(value)

    def describe(self) -> str:
        return f"file {self.file}" if self.file is not None else f"environment variable {self.env}"


# --- system -----------------------------------------------------------------------------------


class System(Strict):
    hostname: Hostname
    ntp: list[str] = []
    domain: str | None = None


# --- interfaces -------------------------------------------------------------------------------


class PublicInterface(Strict):
    """The NBMA (underlay) interface: the address the tunnel is sourced from."""

    name: InterfaceName = "eth0"
    address: IPv4Interface | None = None
    gateway: IPv4Address | None = None
    dhcp: bool = False
    mtu: Annotated[int, Field(ge=1280, le=9216)] | None = None


class LanInterface(Strict):
    name: InterfaceName
    address: IPv4Interface
    mtu: Annotated[int, Field(ge=1280, le=9216)] | None = None
    description: str | None = None


class Interfaces(Strict):
    public: PublicInterface
    lan: list[LanInterface] = []


# --- dmvpn ------------------------------------------------------------------------------------


class NextHopServer(Strict):
    """A hub as seen from a spoke: its overlay (tunnel) address and its NBMA address or name."""

    address: IPv4Address
    nbma: AddressOrHostname


class Nhrp(Strict):
    network_id: Annotated[int, Field(ge=1, le=4294967295)] = 1
    holdtime: Annotated[int, Field(ge=1, le=65535)] = 300
    # Cisco-compatible cleartext string (max 8 characters): interop only, not a security control.
    authentication: Annotated[str, Field(min_length=1, max_length=8)] | None = None
    phase: Literal[1, 2, 3] = 3
    nhs: list[NextHopServer] = []
    # Replicate link-local multicast (OSPF hellos) to the NHS (spoke) or registered spokes (hub).
    multicast: bool = True
    # Accept a spoke re-registering from a new NBMA address before its old entry expires.
    registration_no_unique: bool = True


class Tunnel(Strict):
    name: InterfaceName = "dmvpn0"
    address: IPv4Address  # installed as /32: nhrpd refuses anything else
    prefix: IPv4Network  # the overlay network all hubs and spokes live in
    key: Annotated[int, Field(ge=0, le=4294967295)] | None = None
    mtu: Annotated[int, Field(ge=576, le=9000)] = 1400
    tcp_mss: Annotated[int, Field(ge=536, le=8960)] | None = 1360
    source: InterfaceName | None = None  # defaults to interfaces.public.name


class Dmvpn(Strict):
    """The one GRE tunnel of the box. It carries no other, unencrypted GRE tunnel: GRE is protected
    by a transport-mode IPsec trap for every peer, and the firewall accepts GRE only out of IPsec."""

    role: Literal["hub", "spoke"]
    tunnel: Tunnel
    nhrp: Nhrp = Nhrp()
    # Narrows the IPsec peers (remote_addrs/remote_ts) to an underlay range; default: any peer.
    underlay: list[IPv4Network] = []


# --- ipsec ------------------------------------------------------------------------------------


class X509Auth(Strict):
    ca: Path
    cert: Path
    key: Path
    # Identity; default: the certificate's subject.
    id: str | None = None
    # Only peers whose certificate subject matches (strongSwan wildcard syntax) are accepted.
    remote_id: str | None = None


class IpsecAuth(Strict):
    psk: SecretRef | None = None
    x509: X509Auth | None = None

    @model_validator(mode="after")
    def _one_method(self) -> IpsecAuth:
        if (self.psk is None) == (self.x509 is None):
            raise ValueError("give exactly one of 'psk' or 'x509'")
        return self


class Dpd(Strict):
    delay: Annotated[int, Field(ge=0, le=3600)] = 10  # seconds; 0 disables
    timeout: Annotated[int, Field(ge=5, le=3600)] = 30  # IKEv1 only; IKEv2 uses retransmits
    action: Literal["clear", "trap", "restart"] = "trap"


class Ipsec(Strict):
    ike_version: Literal[1, 2] = 2
    ike_proposals: list[str] = ["aes256gcm16-prfsha384-ecp384"]
    esp_proposals: list[str] = ["aes256gcm16-ecp384"]
    auth: IpsecAuth
    dpd: Dpd = Dpd()
    ike_lifetime: Annotated[int, Field(ge=300, le=604800)] = 28800  # seconds until IKE rekey
    child_lifetime: Annotated[int, Field(ge=120, le=86400)] = 3600  # seconds until CHILD rekey
    # Always UDP-encapsulate ESP (port 4500) even when no NAT is detected.
    force_encapsulation: bool = False


# --- routing ----------------------------------------------------------------------------------


class OspfAuth(Strict):
    key_id: Annotated[int, Field(ge=1, le=255)] = 1
    key: SecretRef


class Ospf(Strict):
    router_id: IPv4Address
    area: IPv4Address | Annotated[int, Field(ge=0, le=4294967295)] = 0
    # Default: point-to-multipoint on a hub and on a spoke with several hubs, point-to-point on a
    # spoke with one hub (measured: p2p with more than one neighbour sticks in ExStart).
    network_type: Literal["point-to-multipoint", "point-to-point", "broadcast"] | None = None
    authentication: OspfAuth | None = None
    passive: list[InterfaceName] | None = None  # default: every LAN interface
    hello_interval: Annotated[int, Field(ge=1, le=65535)] = 10
    dead_interval: Annotated[int, Field(ge=1, le=65535)] = 40
    cost: Annotated[int, Field(ge=1, le=65535)] | None = None
    priority: Annotated[int, Field(ge=0, le=255)] | None = None


class Bgp(Strict):
    asn: Annotated[int, Field(ge=1, le=4294967295)]
    router_id: IPv4Address
    # iBGP inside the overlay by default; a different ASN per spoke makes it eBGP.
    hub_asn: Annotated[int, Field(ge=1, le=4294967295)] | None = None
    # Prefixes this router originates; default: its LAN subnets.
    networks: list[IPv4Network] | None = None
    # Hub only: advertise these aggregates instead of the specific spoke prefixes (phase 3).
    summary_only: list[IPv4Network] = []
    keepalive: Annotated[int, Field(ge=1, le=65535)] = 10
    holdtime: Annotated[int, Field(ge=3, le=65535)] = 30
    password: SecretRef | None = None


class Eigrp(Strict):
    experimental: bool = False
    asn: Annotated[int, Field(ge=1, le=65535)]
    router_id: IPv4Address | None = None
    networks: list[IPv4Network] | None = None


class StaticRoute(Strict):
    prefix: IPv4Network
    via: IPv4Address | None = None
    interface: InterfaceName | None = None
    blackhole: bool = False
    distance: Annotated[int, Field(ge=1, le=255)] | None = None

    @model_validator(mode="after")
    def _one_target(self) -> StaticRoute:
        if sum([self.via is not None or self.interface is not None, self.blackhole]) != 1:
            raise ValueError("give 'via' and/or 'interface', or 'blackhole: true'")
        return self


class Routing(Strict):
    ospf: Ospf | None = None
    bgp: Bgp | None = None
    eigrp: Eigrp | None = None
    static: list[StaticRoute] = []


# --- vrrp -------------------------------------------------------------------------------------


class VrrpGroup(Strict):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_\-]{1,32}$")]
    interface: InterfaceName
    vrid: Annotated[int, Field(ge=1, le=255)]
    priority: Annotated[int, Field(ge=1, le=254)] = 100
    version: Literal[2, 3] = 3
    advert_interval: Annotated[float, Field(ge=0.01, le=255)] = 1.0  # seconds; < 1 needs v3
    virtual_addresses: Annotated[list[IPv4Interface], Field(min_length=1)]
    preempt: bool = True
    preempt_delay: Annotated[int, Field(ge=0, le=1000)] = 0
    track_interfaces: list[InterfaceName] = []
    # Give up mastership when the tunnel is down (no NHS registered / no IPsec SA to a hub).
    track_tunnel: bool = False
    unicast_peers: list[IPv4Address] = []


class Vrrp(Strict):
    groups: list[VrrpGroup] = []


# --- firewall ---------------------------------------------------------------------------------

Port = Annotated[int, Field(ge=1, le=65535)]


class ServiceRule(Strict):
    """Something allowed in on the public interface beyond IKE/ESP (management, for example)."""

    protocol: Literal["tcp", "udp"]
    port: Port
    sources: list[IPv4Network] = []  # empty: from anywhere


class TunnelRule(Strict):
    action: Literal["accept", "drop"]
    sources: list[IPv4Network] = []
    destinations: list[IPv4Network] = []
    protocol: Literal["tcp", "udp", "icmp"] | None = None
    port: Port | None = None


class PublicPolicy(Strict):
    icmp: bool = True
    icmp_rate: Annotated[str, Field(pattern=r"^\d+/(second|minute)$")] = "10/second"
    allow: list[ServiceRule] = []


class TunnelPolicy(Strict):
    default: Literal["accept", "drop"] = "accept"
    rules: list[TunnelRule] = []


class Firewall(Strict):
    public: PublicPolicy = PublicPolicy()
    tunnel: TunnelPolicy = TunnelPolicy()
    # Source-NAT LAN traffic that leaves through the public interface (local internet breakout).
    masquerade: bool = False
    # NHRP redirect (phase 3) rate on the hub, in packets per second.
    redirect_rate: Annotated[int, Field(ge=1, le=10000)] = 10


# --- the site ---------------------------------------------------------------------------------


class Site(Strict):
    system: System
    interfaces: Interfaces
    dmvpn: Dmvpn
    ipsec: Ipsec
    routing: Routing = Routing()
    vrrp: Vrrp = Vrrp()
    firewall: Firewall = Firewall()

    @property
    def role(self) -> str:
        return self.dmvpn.role

    @property
    def tunnel_source(self) -> str:
        return self.dmvpn.tunnel.source or self.interfaces.public.name

    def lan(self, name: str) -> LanInterface | None:
        return next((i for i in self.interfaces.lan if i.name == name), None)
