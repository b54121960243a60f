"""The lab topology file: nodes and links, containerlab-style, with site-file-quality errors.

    name: dmvpn                      # optional; default: the file name without .yaml
    nodes:
      inet:   {kind: internet, interfaces: {eth1: 192.0.2.1/30}}
      nat3:   {kind: internet, interfaces: {eth0: 203.0.113.2/30, eth1: 192.168.100.1/24},
               gateway: 203.0.113.1, masquerade: [eth0]}
      hub:    {kind: router, site: hub.yaml}              # `appliance apply hub.yaml` runs inside
      host1:  {kind: host, address: 10.0.1.10/24, gateway: 10.0.1.1}
      box:    {kind: linux}                               # private dirs, configured through exec
      lan0:   {kind: switch}                              # a bridge: every link to it is one segment
    links:
      - endpoints: [inet:eth1, hub:eth0]

Addresses are per node (each node is its own network namespace), so two spokes may use the same
private address behind different NAT routers. Errors are `FILE:LINE:COL: path: message`, through
the same loader as site files; a router's site file is validated too (without its secrets).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..model.loader import Document, Problem, SiteError, load_document, problems_from_validation
from ..model.validate import LoadedSite, load_site

NodeName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{0,14}$")]
InterfaceName = Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_.\-]{0,14}$")]
Endpoint = Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{0,14}:[A-Za-z][A-Za-z0-9_.\-]{0,14}$")]
EnvName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Route(Strict):
    to: IPv4Network
    via: IPv4Address


class RouterNode(Strict):
    kind: Literal["router"]
    site: Path  # relative to the topology file
    env: dict[EnvName, str] = {}  # overrides the lab's generated secrets (e.g. a wrong key)
    setup: list[str] = []  # shell commands run in the node before `appliance apply`


class LinuxNode(Strict):
    kind: Literal["linux"]
    setup: list[str] = []


class HostNode(Strict):
    kind: Literal["host"]
    interface: InterfaceName = "eth0"
    address: IPv4Interface
    gateway: IPv4Address | None = None


class InternetNode(Strict):
    kind: Literal["internet"]
    interfaces: dict[InterfaceName, IPv4Interface]
    gateway: IPv4Address | None = None
    routes: list[Route] = []
    masquerade: list[InterfaceName] = []  # source NAT for traffic leaving through these interfaces


class SwitchNode(Strict):
    """An Ethernet segment for more than two nodes (two hubs and a host on one LAN, a VRRP pair)."""

    kind: Literal["switch"]


NODE_KINDS = ("router", "linux", "host", "internet", "switch")
Node = Annotated[RouterNode | LinuxNode | HostNode | InternetNode | SwitchNode, Field(discriminator="kind")]


class Link(Strict):
    endpoints: Annotated[list[Endpoint], Field(min_length=2, max_length=2)]


class TopologyModel(Strict):
    name: NodeName | None = None
    # Run `appliance supervise` in every router after its apply, as appliance-supervisor.service
    # does on a box (health, drift repair). Off by default: tests of apply itself want no repairs.
    supervise: bool = False
    # Seconds between supervisor rounds (the box's default is 5). A round reads every daemon, which
    # costs seconds under emulation: labs that do not test drift repair run it less often.
    supervise_interval: Annotated[float, Field(gt=0)] = 5.0
    nodes: Annotated[dict[NodeName, Node], Field(min_length=1)]
    links: list[Link] = []


@dataclass
class Topology:
    """A validated topology: the model, where it came from, and each router's loaded site."""

    model: TopologyModel
    document: Document
    sites: dict[str, LoadedSite] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return Path(self.document.file).resolve()

    @property
    def name(self) -> str:
        stem = re.sub(r"[^a-z0-9-]", "-", self.path.stem.lower()).strip("-")[:15] or "lab"
        return self.model.name or stem

    @property
    def nodes(self) -> dict[str, Node]:
        return self.model.nodes

    def site_path(self, node: str) -> Path:
        return (self.path.parent / self.model.nodes[node].site).resolve()

    def interfaces(self, node: str) -> list[str]:
        """Interfaces the node needs: its links' ends, plus those its site or config names."""
        names = [
            end.split(":", 1)[1] for link in self.model.links for end in link.endpoints if end.startswith(node + ":")
        ]
        spec = self.model.nodes[node]
        wanted: list[str] = []
        if isinstance(spec, RouterNode) and node in self.sites:
            ifs = self.sites[node].site.interfaces
            wanted = [ifs.public.name, *(lan.name for lan in ifs.lan)]
        elif isinstance(spec, InternetNode):
            wanted = list(spec.interfaces)
        elif isinstance(spec, HostNode):
            wanted = [spec.interface]
        return list(dict.fromkeys(names + wanted))

    def addresses(self, node: str) -> list[str]:
        spec = self.model.nodes[node]
        if isinstance(spec, HostNode):
            return [str(spec.address)]
        if isinstance(spec, InternetNode):
            return [str(a) for a in spec.interfaces.values()]
        if isinstance(spec, RouterNode) and node in self.sites:
            site = self.sites[node].site
            out = [str(site.interfaces.public.address)] if site.interfaces.public.address else []
            out += [str(lan.address) for lan in site.interfaces.lan]
            return out + [f"{site.dmvpn.tunnel.address}/32"]
        return []

    def routers(self) -> list[str]:
        return [n for n, s in self.model.nodes.items() if isinstance(s, RouterNode)]


def load_topology(path: str | Path) -> Topology:
    """Parse and check a topology file and its routers' site files; SiteError lists every problem."""
    doc = load_document(path)
    model = _validate(doc)
    topology = Topology(model, doc)
    problems: list[Problem] = []
    problems += _check_links(doc, model)
    for name, spec in model.nodes.items():
        if isinstance(spec, RouterNode):
            site_file = topology.site_path(name)
            if not site_file.is_file():
                problems.append(doc.problem(("nodes", name, "site"), f"no such file: {site_file}"))
                continue
            try:
                topology.sites[name] = load_site(site_file, resolve_secrets=False)
            except SiteError as e:
                problems.append(doc.problem(("nodes", name, "site"), f"invalid site file {site_file}"))
                problems += e.problems
        elif isinstance(spec, InternetNode):
            for i, ifname in enumerate(spec.masquerade):
                if ifname not in spec.interfaces:
                    problems.append(
                        doc.problem(("nodes", name, "masquerade", i), f"{ifname} is not one of this node's interfaces")
                    )
            if spec.gateway and not any(spec.gateway in a.network for a in spec.interfaces.values()):
                problems.append(doc.problem(("nodes", name, "gateway"), "not in any of this node's interface subnets"))
        elif isinstance(spec, HostNode):
            if spec.gateway and spec.gateway not in spec.address.network:
                problems.append(doc.problem(("nodes", name, "gateway"), f"not in {spec.address.network}"))
    if problems:
        raise SiteError(problems)
    return topology


def _validate(doc: Document) -> TopologyModel:
    try:
        return TopologyModel.model_validate(doc.data)
    except ValidationError as e:
        # pydantic names the union member in the location (nodes.hub.router.site): drop the tag
        details = []
        for err in e.errors(include_url=False):
            loc = list(err["loc"])
            if len(loc) > 2 and loc[0] == "nodes" and loc[2] in NODE_KINDS:
                del loc[2]
            detail = {"type": err["type"], "loc": tuple(loc), "input": err["input"]}
            if "ctx" in err:
                detail["ctx"] = err["ctx"]
            details.append(detail)
        raise SiteError(problems_from_validation(doc, ValidationError.from_exception_data(e.title, details))) from None


def _check_links(doc: Document, model: TopologyModel) -> list[Problem]:
    problems = []
    seen: dict[str, int] = {}
    for i, link in enumerate(model.links):
        for j, end in enumerate(link.endpoints):
            node, ifname = end.split(":", 1)
            where = ("links", i, "endpoints", j)
            if node not in model.nodes:
                problems.append(doc.problem(where, f"no node {node!r} in nodes"))
            elif end in seen:
                problems.append(doc.problem(where, f"{end} is already used by links[{seen[end]}]"))
            else:
                spec = model.nodes[node]
                if isinstance(spec, HostNode) and ifname != spec.interface:
                    problems.append(doc.problem(where, f"host {node} has one interface, {spec.interface}"))
                if isinstance(spec, InternetNode) and ifname not in spec.interfaces:
                    problems.append(doc.problem(where, f"{ifname} has no address in nodes.{node}.interfaces"))
            seen.setdefault(end, i)
        if link.endpoints[0].split(":")[0] == link.endpoints[1].split(":")[0]:
            problems.append(doc.problem(("links", i, "endpoints"), "a link joins two different nodes"))
    return problems
