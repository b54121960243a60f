"""nftables: table `inet appliance`, replaced in one python-nftables transaction, diffed by meaning.

The renderer's batch (`add table; delete table; add table; objects...`) is sent as is with
`json_cmd`: the kernel swaps the whole table atomically or keeps the old one. To decide whether to
send it, the running table (`list table`, JSON) and the batch are both reduced to one canonical
form: what nft adds when it prints back (handles, counter values, a limit's default burst) is
dropped or filled in, set elements are sorted, rules are grouped by chain in their order.
"""

from __future__ import annotations

import json
import socket
from ipaddress import IPv4Network, collapse_addresses
from typing import Any

from ..nft import NftablesMissing, load_nftables
from ..render.firewall import FAMILY, NFTABLES_JSON_PATH
from ..render.spec import DesiredState
from .base import (
    CHANGE,
    CREATE,
    Change,
    Context,
    DriverError,
    file_change,
    file_restore,
    file_snapshot,
    find_file,
    write_rendered,
)

SUBSYSTEM = "firewall"
DEFAULT_LIMIT_BURST = 5  # what the kernel uses (and nft prints) when a limit names no burst
_PRINTED_ONLY = frozenset({"handle", "family", "table"})  # nft prints these on every object


def nftables_session() -> Any:
    """A python-nftables handle, or a DriverError with one line saying how to install it."""
    try:
        return load_nftables()
    except NftablesMissing as e:
        raise DriverError(SUBSYSTEM, str(e)) from None


# --- canonical form (pure) ----------------------------------------------------------------------


_PROTOCOL_FIELDS = ({"payload": {"protocol": "ip", "field": "protocol"}}, {"meta": {"key": "l4proto"}})


def _protocol_number(value: Any) -> Any:
    """'vrrp' -> 112: nft prints a protocol by its name whichever form it was given."""
    if isinstance(value, str):
        try:
            return socket.getprotobyname(value)
        except OSError:
            return value
    return value


def _network(value: Any) -> IPv4Network | None:
    if isinstance(value, dict) and set(value) == {"prefix"}:
        value = f"{value['prefix']['addr']}/{value['prefix']['len']}"
    if not isinstance(value, str):
        return None
    try:
        return IPv4Network(value)
    except ValueError:
        return None


def _address_element(net: IPv4Network) -> Any:
    if net.prefixlen == 32:
        return str(net.network_address)
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


def _canonical_set(elements: list[Any]) -> Any:
    """Sorted elements; address sets merged as the kernel's interval sets merge them (10.1/16 in 10/8)."""
    nets = [_network(e) for e in elements]
    if elements and all(n is not None for n in nets):
        merged = [_address_element(n) for n in collapse_addresses(nets)]
        return merged[0] if len(merged) == 1 else {"set": merged}
    return {"set": sorted(elements, key=lambda v: json.dumps(v, sort_keys=True))}


def _canonical_expr(value: Any) -> Any:
    if isinstance(value, list):
        return [_canonical_expr(v) for v in value]
    if not isinstance(value, dict):
        return value
    out = {k: _canonical_expr(v) for k, v in value.items()}
    if set(out) == {"set"} and isinstance(out["set"], list):
        return _canonical_set(out["set"])
    if isinstance(out.get("counter"), dict) and set(out["counter"]) <= {"packets", "bytes"}:
        out["counter"] = None  # an anonymous counter: nft prints its current values
    if isinstance(out.get("limit"), dict):
        out["limit"] = {"burst": DEFAULT_LIMIT_BURST, **out["limit"]}
    match = out.get("match")
    if isinstance(match, dict) and match.get("left") in _PROTOCOL_FIELDS:
        right = match["right"]
        match["right"] = (
            {"set": sorted((_protocol_number(v) for v in right["set"]), key=str)}
            if isinstance(right, dict) and "set" in right
            else _protocol_number(right)
        )
    return out


def canonical_table(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """Objects of one table ({"chain": {...}}, {"rule": {...}}, ...) -> a form equal for equal meaning.

    {"chain": {name: attrs}, "counter": {name: attrs}, ..., "rules": {chain: [rule, ...]}}."""
    out: dict[str, Any] = {"rules": {}}
    for obj in objects:
        ((kind, body),) = obj.items()
        if kind in ("table", "metainfo"):
            continue
        body = {k: v for k, v in body.items() if k not in _PRINTED_ONLY}
        if kind == "rule":
            chain = body.pop("chain")
            rule = {"comment": body.get("comment"), "expr": _canonical_expr(body.get("expr", []))}
            out["rules"].setdefault(chain, []).append(rule)
            continue
        if kind == "counter":
            body = {k: v for k, v in body.items() if k not in ("packets", "bytes")}
        name = body.pop("name")
        out.setdefault(kind, {})[name] = _canonical_expr(body)
    return out


def batch_objects(batch: dict[str, Any], family: str, table: str) -> list[dict[str, Any]]:
    """What a replacing batch leaves in table family/table: the objects added after its last delete."""
    objects: list[dict[str, Any]] = []
    for cmd in batch.get("nftables", []):
        ((verb, arg),) = cmd.items()
        if verb == "metainfo":
            continue
        ((kind, body),) = arg.items()
        if kind == "table":
            if verb in ("delete", "flush") and (body.get("family"), body.get("name")) == (family, table):
                objects = []
            continue
        if verb in ("add", "create") and body.get("table") == table:
            objects.append({kind: body})
    return objects


def describe_differences(running: dict[str, Any], desired: dict[str, Any]) -> list[str]:
    """'+ rule input public-allow-tcp-22', '~ chain forward', ... in a stable order."""
    lines = []
    for kind in sorted((set(running) | set(desired)) - {"rules"}):
        have, want = running.get(kind, {}), desired.get(kind, {})
        for name in sorted(set(have) | set(want)):
            if name not in have:
                lines.append(f"+ {kind} {name}")
            elif name not in want:
                lines.append(f"- {kind} {name}")
            elif have[name] != want[name]:
                lines.append(f"~ {kind} {name}")
    have_rules, want_rules = running["rules"], desired["rules"]
    for chain in sorted(set(have_rules) | set(want_rules)):
        have, want = have_rules.get(chain, []), want_rules.get(chain, [])
        if have == want:
            continue
        have_by, want_by = _by_comment(have), _by_comment(want)
        if have_by is None or want_by is None:  # rules without unique comments: say the chain changed
            lines.append(f"~ rules of chain {chain}")
            continue
        before = len(lines)
        for comment in want_by:
            if comment not in have_by:
                lines.append(f"+ rule {chain} {comment}")
            elif have_by[comment] != want_by[comment]:
                lines.append(f"~ rule {chain} {comment}")
        lines += [f"- rule {chain} {c}" for c in have_by if c not in want_by]
        if len(lines) == before:  # the same rules, in another order
            lines.append(f"~ order of rules in chain {chain}")
    return lines


def _by_comment(rules: list[dict[str, Any]]) -> dict[str, Any] | None:
    comments = [r["comment"] for r in rules]
    if None in comments or len(set(comments)) != len(comments):
        return None
    return {r["comment"]: r for r in rules}


# --- the driver ---------------------------------------------------------------------------------


class FirewallDriver:
    name = SUBSYSTEM

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._nft: Any = None

    @property
    def nft(self) -> Any:
        if self._nft is None:
            self._nft = nftables_session()
        return self._nft

    def claims(self, desired: DesiredState) -> set[str]:
        return {NFTABLES_JSON_PATH}

    # --- the kernel's table ----------------------------------------------------------------------

    def _cmd(self, command: str) -> tuple[int, str, str]:
        return self.nft.cmd(command)

    def running_objects(self, table: str) -> list[dict[str, Any]] | None:
        """The table as nft lists it (JSON objects), or None when it does not exist."""
        rc, out, err = self._cmd(f"list table {FAMILY} {table}")
        if rc == 0:
            return [o for o in json.loads(out).get("nftables", []) if "metainfo" not in o]
        rc_tables, tables, _ = self._cmd(f"list tables {FAMILY}")
        names = [o["table"]["name"] for o in json.loads(tables or "{}").get("nftables", []) if "table" in o]
        if rc_tables == 0 and table not in names:
            return None
        raise DriverError(self.name, f"cannot list table {FAMILY} {table}", err)

    def _send(self, batch: dict[str, Any], what: str) -> None:
        rc, _, err = self.nft.json_cmd(batch)
        if rc != 0:
            raise DriverError(self.name, what, err or f"nft returned {rc}")

    # --- protocol --------------------------------------------------------------------------------

    def diff(self, desired: DesiredState) -> list[Change]:
        spec = desired.firewall
        changes = []
        running = self.running_objects(spec.table)
        want = canonical_table(batch_objects(spec.batch, FAMILY, spec.table))
        label = f"table {FAMILY} {spec.table}"
        if running is None:
            rules = sum(len(r) for r in want["rules"].values())
            desc = f"create {label} ({len(want.get('chain', {}))} chains, {rules} rules)"
            changes.append(Change(self.name, CREATE, "table", label, desc, payload=spec.batch))
        else:
            differences = describe_differences(canonical_table(running), want)
            if differences:
                shown = ", ".join(differences[:3]) + (f", {len(differences) - 3} more" if len(differences) > 3 else "")
                desc = f"replace {label} ({shown})"
                changes.append(
                    Change(self.name, CHANGE, "table", label, desc, "\n".join(differences), payload=spec.batch)
                )
        f = find_file(desired, NFTABLES_JSON_PATH)
        if f is not None:
            c = file_change(self.ctx, self.name, f)
            if c is not None:
                changes.append(c)
        return changes

    def apply(self, changes: list[Change]) -> None:
        # The kernel first: the boot-time file only ever holds a ruleset nft accepted.
        for c in sorted(changes, key=lambda c: c.kind != "table"):
            if c.kind == "table":
                self._send(c.payload, f"nft refused the ruleset for {c.name}")
            elif c.kind == "file":
                write_rendered(self.ctx, c.payload)

    def verify(self, desired: DesiredState) -> None:
        left = self.diff(desired)
        if left:
            raise DriverError(self.name, "still differs after apply", "; ".join(c.description for c in left))

    def snapshot(self, desired: DesiredState) -> dict[str, Any]:
        return {
            "table": desired.firewall.table,
            "objects": self.running_objects(desired.firewall.table),
            "files": file_snapshot(self.ctx, [NFTABLES_JSON_PATH]),
        }

    def restore(self, snapshot: dict[str, Any]) -> None:
        table = snapshot["table"]
        ident = {"family": FAMILY, "name": table}
        objects = snapshot["objects"]
        if objects is None:
            if self.running_objects(table) is not None:
                self._send({"nftables": [{"delete": {"table": ident}}]}, f"cannot delete table {FAMILY} {table}")
        else:
            batch = replacing_batch(table, objects)
            self._send(batch, f"cannot restore table {FAMILY} {table}")
        file_restore(self.ctx, snapshot["files"])


def replacing_batch(table: str, objects: list[dict[str, Any]]) -> dict[str, Any]:
    """A batch that replaces family/table with `objects` as nft listed them (handles dropped)."""
    ident = {"family": FAMILY, "name": table}
    commands: list[dict[str, Any]] = [{"metainfo": {"json_schema_version": 1}}]
    commands += [{"add": {"table": ident}}, {"delete": {"table": ident}}]
    table_obj = next((o["table"] for o in objects if "table" in o), None)
    commands.append({"add": {"table": {k: v for k, v in (table_obj or ident).items() if k != "handle"}}})
    for obj in objects:
        ((kind, body),) = obj.items()
        if kind in ("table", "metainfo"):
            continue
        commands.append({"add": {kind: {k: v for k, v in body.items() if k != "handle"}}})
    return {"nftables": commands}
