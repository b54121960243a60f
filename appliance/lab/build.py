"""The topology as a build plan for the VM (executed there by guest/build.py, in one process).

Every node is a network namespace with its own mount and UTS namespaces, pinned by bind mounts
under /run/lab/ns (the agent enters them with nsenter). Routers and linux nodes get private
/etc (an overlay over the VM's /etc: their own frr, swanctl, appliance, keepalived configs),
/var/lib and /tmp (overlays), /var/log and /run, so several FRR, charon and keepalived instances
coexist, each with its own sockets and pid files, as in FRR's topotests (munet). /dev/log points
to /run/log.sock, hence to each node's own syslog socket, received by the agent into the node's
/var/log/syslog.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .topology import HostNode, InternetNode, LinuxNode, RouterNode, SwitchNode, Topology

NODE_ROOT = "/run/lab"  # per-node directories in the VM; NODE_ROOT/ns holds the namespaces
GUEST_BUILD = Path(__file__).resolve().parent / "guest" / "build.py"
# Loaded before the build. The kernel would load the data plane's modules on first use
# (request_module), but measured under TCG on two busy cores: the ESP/GCM crypto modules came
# minutes after charon's first SA, which the kernel refused meanwhile (ENOSYS: "unable to add SAD
# entry"), and every apply timed out. So: everything a router uses, once, while nodes are built.
MODULES = [
    "veth", "dummy", "bridge",
    "ip_gre", "esp4", "xfrm_user", "gcm", "ghash_generic", "seqiv", "ctr", "drbg",
    "nf_tables", "nft_ct", "nft_limit", "nft_log", "nft_masq", "nft_chain_nat", "nft_objref",
    "nfnetlink_log", "nf_nat",
]  # fmt: skip


def has_private_dirs(spec: object) -> bool:
    return isinstance(spec, RouterNode | LinuxNode)


def build_plan(topology: Topology) -> dict[str, Any]:
    """JSON for guest/build.py: nodes (namespaces, sysctls, `ip -batch` lines, nft), then links."""
    linked = {end for link in topology.model.links for end in link.endpoints}
    links = []
    for link in topology.model.links:
        (a_node, a_if), (b_node, b_if) = (end.split(":", 1) for end in link.endpoints)
        links.append(f"link add {a_if} netns {a_node} type veth peer name {b_if} netns {b_node}")
    nodes = []
    for name, spec in topology.nodes.items():
        ip = ["link set lo up"]
        for ifname in topology.interfaces(name):
            if f"{name}:{ifname}" not in linked:
                # a LAN the site names but nothing connects: a dummy interface, so apply finds it
                ip.append(f"link add {ifname} type dummy")
            ip.append(f"link set {ifname} up")
        node: dict[str, Any] = {"name": name, "private": has_private_dirs(spec), "ip": ip}
        if isinstance(spec, SwitchNode):
            ports = topology.interfaces(name)
            ip[1:1] = ["link add br0 type bridge", *(f"link set {port} master br0" for port in ports)]
            ip.append("link set br0 up")
        elif isinstance(spec, HostNode):
            ip.append(f"addr add {spec.address} dev {spec.interface}")
            if spec.gateway:
                ip.append(f"route add default via {spec.gateway}")
        elif isinstance(spec, InternetNode):
            node["sysctl"] = {"net.ipv4.ip_forward": "1"}
            ip += [f"addr add {address} dev {ifname}" for ifname, address in spec.interfaces.items()]
            if spec.gateway:
                ip.append(f"route add default via {spec.gateway}")
            ip += [f"route add {route.to} via {route.via}" for route in spec.routes]
            if spec.masquerade:
                out = ", ".join(f'"{i}"' for i in spec.masquerade)
                node["nft"] = (
                    "table ip lab-nat {\n  chain postrouting {\n    type nat hook postrouting priority srcnat;\n"
                    f"    oifname {{ {out} }} counter masquerade\n  }}\n}}\n"
                )
        nodes.append(node)
    return {"root": NODE_ROOT, "modules": MODULES, "nodes": nodes, "links": links}
