"""Reading the running state of a box for `show` (and later the supervisor).

Always the daemons' own structured forms: vtysh `... json`, VICI `list_sas`, nft JSON, netlink;
never screen-scraping where a JSON form exists. Each reader returns plain data, raises
`StatusError` with a one-line reason when the daemon cannot be reached.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

from .nft import NftablesMissing, load_nftables

VICI_SOCKET = "/var/run/charon.vici"
VRRP_STATE_DIR = Path("/run/appliance/vrrp")  # written by render/vrrp.py's state reader (a test ties the two)


class StatusError(Exception):
    """A daemon or tool could not be asked; the message says which and why."""


def vtysh_json(*commands: str) -> list[Any]:
    """Run several `show ... json` commands in ONE vtysh call (vtysh start-up is the slow part)."""
    argv = ["vtysh"]
    for c in commands:
        argv += ["-c", c]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    except FileNotFoundError:
        raise StatusError("vtysh not found (apt-get install --no-install-recommends frr)") from None
    except subprocess.TimeoutExpired:
        raise StatusError("vtysh did not answer within 60 s") from None
    if proc.returncode != 0 and not proc.stdout.strip():
        raise StatusError(f"vtysh: {(proc.stderr or proc.stdout).strip() or 'exit ' + str(proc.returncode)}")
    docs, text = _split_json(proc.stdout)
    if len(docs) != len(commands):
        said = "; ".join(text) or proc.stdout.strip()[:200]
        raise StatusError(f"vtysh: expected {len(commands)} JSON answers, got {len(docs)}: {said}")
    return docs


def _split_json(output: str) -> tuple[list[Any], list[str]]:
    """vtysh prints one JSON document per -c, back to back: (the documents, the other lines).

    Other lines are errors ("% Unknown command") or, measured with FRR 8.4.4, the text header
    'show ip nhrp shortcut json' prints before its JSON: they never count as an answer."""
    decoder = json.JSONDecoder()
    docs, text, i = [], [], 0
    while True:
        while i < len(output) and output[i].isspace():
            i += 1
        if i >= len(output):
            return docs, text
        try:
            doc, i = decoder.raw_decode(output, i)
        except json.JSONDecodeError:
            end = output.find("\n", i)
            end = len(output) if end < 0 else end
            text.append(output[i:end].strip())
            i = end
            continue
        docs.append(doc)


def _table(doc: Any) -> list[dict]:
    if isinstance(doc, dict):
        return list(doc.get("table", []))
    return list(doc) if isinstance(doc, list) else []


def dmvpn() -> dict[str, Any]:
    """`show dmvpn`: nhrpd's view, and the shortcuts the supervisor sends through the hub."""
    through_hub = [{"prefix": p, "via": v} for p, v in sorted(_nat_pair_routes().items())]
    return {**nhrp(), "through_hub": through_hub}


def nhrp() -> dict[str, Any]:
    """nhrpd's view: NHS registrations, cache (peers), shortcuts; duplicate NBMA addresses flagged."""
    nhs, cache, shortcuts = vtysh_json("show ip nhrp nhs json", "show ip nhrp cache json", "show ip nhrp shortcut json")
    peers = [e for e in _table(cache) if e.get("type") in ("dynamic", "nhs", "static", "cached")]
    # Registrations exist on a hub only (a box with no NHS): a spoke's dynamic entries are its own
    # resolutions, one per resolved address (a LAN host and its spoke share an NBMA: measured).
    registrations = [e for e in peers if e.get("type") == "dynamic"] if not _table(nhs) else []
    by_nbma = Counter(e.get("nbma") for e in registrations)
    warnings = [
        f"{count} spokes registered from NBMA {nbma}: spokes behind one PAT address cannot all work "
        f"(Linux transport-mode IPsec selects SAs by address, not port)"
        for nbma, count in sorted(by_nbma.items())
        if nbma and count > 1
    ]
    servers = [{**e, "registered": nhs_registered(e)} for e in _table(nhs)]
    return {"nhs": servers, "cache": _table(cache), "shortcuts": _table(shortcuts), "warnings": warnings}


def _nat_pair_routes() -> dict[str, str]:
    """Shortcut prefixes the supervisor sends through the hub (both spokes behind NAT; nat_pairs.py)."""
    from . import nat_pairs
    from .drivers.netlink import KernelReader

    with KernelReader() as kernel:  # a read: no need for IPRoute's ~190 modules
        return nat_pairs.installed(kernel)


def nhs_registered(entry: dict[str, Any]) -> bool:
    """nhrpd learns the NHS's overlay address from its registration reply; '(unspec)' until then."""
    protocol = str(entry.get("protocol") or "")
    return bool(protocol) and protocol != "(unspec)"


def _vici_session():
    try:
        import vici
    except ImportError:
        raise StatusError("python package 'vici' missing (pip install vici)") from None
    import socket

    path = os.environ.get("APPLIANCE_VICI_SOCKET", VICI_SOCKET)
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    try:
        s.connect(path)
    except OSError as e:
        s.close()
        raise StatusError(f"charon not reachable on {path}: {e.strerror}") from None
    return vici.Session(s)


def _text(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode(errors="replace")
    if isinstance(v, list):
        return [_text(x) for x in v]
    if isinstance(v, dict):
        return {str(_text(k)): _text(x) for k, x in v.items()}
    return v


def ipsec() -> dict[str, Any]:
    """IKE and CHILD SAs from VICI list_sas: peers, NAT state, algorithms, byte counters."""
    session = _vici_session()
    sas = []
    for entry in session.list_sas():
        for name, sa in _text(entry).items():
            children = []
            for child in sa.get("child-sas", {}).values():
                children.append(
                    {
                        "name": child.get("name"),
                        "state": child.get("state"),
                        "mode": child.get("mode"),
                        "protocol": child.get("protocol"),
                        "encap": child.get("encap") == "yes",
                        "encryption": "-".join(x for x in (child.get("encr-alg"), child.get("encr-keysize")) if x),
                        "spi_in": child.get("spi-in"),
                        "spi_out": child.get("spi-out"),
                        "bytes_in": int(child.get("bytes-in", 0)),
                        "bytes_out": int(child.get("bytes-out", 0)),
                        "packets_in": int(child.get("packets-in", 0)),
                        "packets_out": int(child.get("packets-out", 0)),
                        "local_ts": child.get("local-ts", []),
                        "remote_ts": child.get("remote-ts", []),
                    }
                )
            sas.append(
                {
                    "name": name,
                    "uniqueid": sa.get("uniqueid"),
                    "state": sa.get("state"),
                    "version": int(sa.get("version", 0)),
                    "local": f"{sa.get('local-host')}[{sa.get('local-port')}]",
                    "remote": f"{sa.get('remote-host')}[{sa.get('remote-port')}]",
                    "remote_id": sa.get("remote-id"),
                    "nat_local": sa.get("nat-local") == "yes",
                    "nat_remote": sa.get("nat-remote") == "yes",
                    "encryption": "-".join(x for x in (sa.get("encr-alg"), sa.get("encr-keysize")) if x),
                    "prf": sa.get("prf-alg"),
                    "dh_group": sa.get("dh-group"),
                    "established_s": int(sa.get("established", 0)),
                    "children": children,
                }
            )
    return {"sas": sas}


def ospf() -> dict[str, Any]:
    neighbours, routes = vtysh_json("show ip ospf neighbor json", "show ip route ospf json")
    flat = []
    for router_id, entries in (neighbours.get("neighbors", {}) or {}).items():
        for e in entries:
            flat.append(
                {
                    "router_id": router_id,
                    "state": e.get("nbrState", e.get("state", "")),
                    "address": e.get("ifaceAddress", e.get("address")),
                    "interface": e.get("ifaceName", e.get("interfaceName")),
                    "dead_timer_ms": e.get("deadTimeMsecs", e.get("routerDeadIntervalTimerDueMsec")),
                }
            )
    return {"neighbours": flat, "routes": sorted(routes) if isinstance(routes, dict) else []}


def bgp() -> dict[str, Any]:
    (summary,) = vtysh_json("show bgp ipv4 unicast summary json")
    peers = []
    for addr, p in (summary.get("peers", {}) or {}).items():
        peers.append(
            {
                "peer": addr,
                "remote_as": p.get("remoteAs"),
                "state": p.get("state"),
                "prefixes_received": p.get("pfxRcd", 0),
                "uptime": p.get("peerUptime"),
                "dynamic": bool(p.get("dynamicPeer")),
            }
        )
    return {"as": summary.get("as"), "router_id": summary.get("routerId"), "peers": peers}


def vrrp() -> dict[str, Any]:
    """VRRP instance states as last reported by keepalived's notify hook."""
    groups = []
    if VRRP_STATE_DIR.is_dir():
        for f in sorted(VRRP_STATE_DIR.glob("*.json")):
            try:
                groups.append(json.loads(f.read_text()))
            except (OSError, json.JSONDecodeError):
                continue
    return {"groups": groups}


def firewall(table: str = "appliance") -> dict[str, Any]:
    """Rules of table inet <table> with their comments and counters."""
    try:
        nft = load_nftables()
    except NftablesMissing as e:
        raise StatusError(str(e)) from None
    rc, out, err = nft.cmd(f"list table inet {table}")
    if rc != 0:
        raise StatusError(f"nft: {err.strip()}")
    rules = []
    for item in json.loads(out).get("nftables", []):
        rule = item.get("rule")
        if not rule:
            continue
        counter = next((e["counter"] for e in rule.get("expr", []) if "counter" in e), None)
        rules.append(
            {
                "chain": rule.get("chain"),
                "comment": rule.get("comment", ""),
                "packets": counter.get("packets") if counter else None,
                "bytes": counter.get("bytes") if counter else None,
            }
        )
    return {"table": f"inet {table}", "rules": rules}
