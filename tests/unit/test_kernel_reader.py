"""The netlink driver's KernelReader: RTNL dumps on a bare socket give the observation IPRoute gives,
without importing IPRoute. In fresh netns against the kernel; its error paths on scripted replies."""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from netns import in_fresh_netns

from appliance.drivers.base import DriverError
from appliance.drivers.netlink import (
    DUMP_RECV_BYTES,
    NLM_F_DUMP_INTR,
    NLMSG_DONE,
    NLMSG_ERROR,
    KernelReader,
    iproute_class,
    observe,
)

ROOT = Path(__file__).resolve().parents[2]
RTM_NEWLINK = 16
NLM_F_MULTI = 0x2


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def build_host() -> None:
    """Veth pairs, a bridge, a vxlan, primary and secondary addresses, routes of every kind, neighbours."""
    ip("link", "add", "eth0", "type", "veth", "peer", "name", "eth0-peer")
    ip("link", "add", "eth1", "type", "veth", "peer", "name", "eth1-peer")
    ip("link", "add", "br0", "type", "bridge")
    ip("link", "set", "eth1-peer", "master", "br0")
    ip("link", "set", "br0", "mtu", "1400")
    ip("link", "add", "vx0", "type", "vxlan", "id", "42", "dstport", "4789", "local", "192.0.2.2")
    for name in ("eth0", "eth0-peer", "eth1", "eth1-peer", "br0"):
        ip("link", "set", name, "up")
    ip("addr", "add", "192.0.2.2/24", "dev", "eth0")
    ip("addr", "add", "192.0.2.3/24", "dev", "eth0")  # secondary: same subnet as the primary
    ip("addr", "add", "10.0.0.1/24", "dev", "br0")
    ip("addr", "add", "198.51.100.1/32", "dev", "vx0")  # on a link that is down
    ip("route", "add", "default", "via", "192.0.2.1", "dev", "eth0")
    ip("route", "add", "10.9.0.0/16", "dev", "br0", "metric", "50", "proto", "static")
    ip("route", "add", "10.10.0.0/16", "via", "10.0.0.254", "metric", "7")
    ip("route", "add", "blackhole", "10.66.0.0/16")
    ip("route", "add", "unreachable", "10.67.0.0/16", "metric", "9")
    ip("route", "add", "10.68.0.0/16", "via", "192.0.2.1", "table", "142")  # another table: not observed
    ip("neigh", "add", "192.0.2.9", "lladdr", "02:00:00:00:00:09", "dev", "eth0", "nud", "permanent")
    ip("neigh", "add", "10.0.0.9", "lladdr", "02:00:00:00:00:0a", "dev", "br0", "nud", "permanent")


@in_fresh_netns
def test_the_reader_observes_exactly_what_iproute_observes() -> None:
    build_host()
    with KernelReader() as kernel:
        seen = observe(kernel, {"eth0"})
    with iproute_class()() as ipr:
        assert seen == observe(ipr, {"eth0"})

    links = seen["links"]
    assert {name: (links[name]["kind"], links[name]["mtu"], links[name]["up"]) for name in links} == {
        "lo": (None, 65536, True),
        "eth0": ("veth", 1500, True),
        "eth0-peer": ("veth", 1500, True),
        "eth1": ("veth", 1500, True),
        "eth1-peer": ("veth", 1500, True),
        "br0": ("bridge", 1400, True),
        "vx0": ("vxlan", 1500, False),
    }
    assert seen["addresses"]["eth0"] == [
        {"address": "192.0.2.2/24", "secondary": False},
        {"address": "192.0.2.3/24", "secondary": True},
    ]
    assert seen["addresses"]["vx0"] == [{"address": "198.51.100.1/32", "secondary": False}]
    assert sorted(
        (r["dst"], r["gateway"], r["ifname"], r["metric"], r["kind"], r["proto"]) for r in seen["routes"]
    ) == [
        ("0.0.0.0/0", "192.0.2.1", "eth0", 0, "unicast", 3),
        ("10.0.0.0/24", None, "br0", 0, "unicast", 2),
        ("10.10.0.0/16", "10.0.0.254", "br0", 7, "unicast", 3),
        ("10.66.0.0/16", None, None, 0, "blackhole", 3),
        ("10.67.0.0/16", None, None, 9, "unreachable", 3),
        ("10.9.0.0/16", None, "br0", 50, "unicast", 4),
        ("192.0.2.0/24", None, "eth0", 0, "unicast", 2),
    ]
    assert seen["neighbours"] == [
        {"ifname": "eth0", "dst": "192.0.2.9", "lladdr": "02:00:00:00:00:09", "permanent": True}
    ]


@in_fresh_netns
def test_a_dump_longer_than_one_read_is_read_to_its_end() -> None:
    for i in range(40):
        ip("link", "add", f"v{i}", "type", "veth", "peer", "name", f"v{i}-peer")
    with KernelReader() as kernel:
        links = kernel.get_links()
    assert sum(m["header"]["length"] for m in links) > DUMP_RECV_BYTES  # so the kernel sent several datagrams
    with iproute_class()() as ipr:
        assert [m.get("IFLA_IFNAME") for m in links] == [m.get("IFLA_IFNAME") for m in ipr.get_links()]
    assert len(links) == 81


def test_reading_imports_neither_iproute_nor_asyncio() -> None:
    code = """
import sys
import appliance.drivers.netlink as n
with n.KernelReader() as kernel:
    seen = n.observe(kernel, {"lo"})
assert "lo" in seen["links"], seen
print("asyncio" in sys.modules, "pyroute2.iproute" in sys.modules, "pyroute2.ndb" in sys.modules)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.stdout == "False False False\n", r.stderr


# --- what the kernel may answer besides records: scripted replies ------------------------------------


class ScriptedSocket:
    """Stands in for the reader's netlink socket: answers each dump request with the next scripted
    reply, a list of datagrams, each a list of (type, flags, payload) messages."""

    def __init__(self, replies: list[list[list[tuple[int, int, bytes]]]], recv_flags: int = 0) -> None:
        self.replies, self.recv_flags = replies, recv_flags
        self.requests: list[tuple[int, int]] = []
        self.datagrams: list[bytes] = []

    def send(self, data: bytes) -> int:
        _, kind, _, seq = struct.unpack_from("=IHHI", data)
        self.requests.append((kind, seq))
        for datagram in self.replies.pop(0):
            messages = [struct.pack("=IHHII", 16 + len(p), t, f, seq, 4242) + p for t, f, p in datagram]
            messages.insert(0, struct.pack("=IHHII", 16, RTM_NEWLINK, 0, seq - 1, 4242))  # a stale dump's leftover
            self.datagrams.append(b"".join(messages))
        return len(data)

    def recvmsg(self, size: int) -> tuple[bytes, list, int, int]:
        return self.datagrams.pop(0), [], self.recv_flags, 0

    def close(self) -> None:
        pass


def scripted(replies: list, recv_flags: int = 0) -> tuple[KernelReader, ScriptedSocket]:
    reader = KernelReader()
    reader._sock.close()
    reader._sock = fake = ScriptedSocket(replies, recv_flags)
    return reader, fake


def link(name: str) -> bytes:
    """An RTM_NEWLINK payload: ifinfomsg and IFLA_IFNAME."""
    attr = name.encode() + b"\0"
    nla = struct.pack("=HH", 4 + len(attr), 3) + attr
    return struct.pack("=BxHiII", socket.AF_UNSPEC, 1, 7, 0, 0) + nla + b"\0" * (-len(nla) % 4)


def error(code: int) -> bytes:
    return struct.pack("=i", -code) + struct.pack("=IHHII", 32, 18, 0x301, 1, 0)


def test_a_dump_in_several_datagrams_ends_at_done() -> None:
    reader, fake = scripted(
        [
            [
                [(RTM_NEWLINK, NLM_F_MULTI, link("eth0"))],
                [(RTM_NEWLINK, NLM_F_MULTI, link("eth1"))],
                [(NLMSG_DONE, NLM_F_MULTI, b"\0" * 4)],
            ]
        ]
    )
    assert [m.get("IFLA_IFNAME") for m in reader.get_links()] == ["eth0", "eth1"]
    assert fake.datagrams == []


def test_a_dump_a_change_interrupted_is_read_again() -> None:
    torn = [
        [
            (RTM_NEWLINK, NLM_F_MULTI | NLM_F_DUMP_INTR, link("eth0")),
            (NLMSG_DONE, NLM_F_MULTI | NLM_F_DUMP_INTR, b"\0" * 4),
        ]
    ]
    whole = [[(RTM_NEWLINK, NLM_F_MULTI, link("eth1")), (NLMSG_DONE, NLM_F_MULTI, b"\0" * 4)]]
    reader, fake = scripted([torn, whole])
    assert [m.get("IFLA_IFNAME") for m in reader.get_links()] == ["eth1"]
    assert [kind for kind, _ in fake.requests] == [18, 18]
    assert fake.requests[0][1] != fake.requests[1][1]  # each dump its own sequence number

    reader, _ = scripted([torn, torn, torn])
    with pytest.raises(DriverError, match=r"^netlink: cannot read links: 3 dumps in a row changed while read$"):
        reader.get_links()


def test_an_error_reply_is_a_driver_error_in_the_kernels_words() -> None:
    reader, _ = scripted([[[(NLMSG_ERROR, 0, error(1))]]])
    with pytest.raises(DriverError, match=r"^netlink: cannot read routes: Operation not permitted$"):
        reader.get_routes(family=socket.AF_INET)


def test_a_truncated_datagram_is_an_error_not_a_short_answer() -> None:
    reader, _ = scripted([[[(RTM_NEWLINK, NLM_F_MULTI, link("eth0"))]]], recv_flags=socket.MSG_TRUNC)
    with pytest.raises(DriverError, match=r"^netlink: cannot read links: a reply exceeds 65536 bytes$"):
        reader.get_links()
