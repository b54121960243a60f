"""strongSwan through VICI: connections, the PSK, X.509 credentials; swanctl.conf for reboots.

Observation. VICI cannot read back what a connection was loaded with (`list-conns` prints a
different, lossy form) nor any secret. So the ledger (section "ipsec", 0600) keeps, per object the
appliance loaded, a hash of exactly what it sent: the connection dict (sha256; no secret in it),
the PSK and private keys (an HMAC under the box key, never the secret). An object counts as in place when
charon still lists it (`get-conns`, `get-shared`, `list-certs`, `get-keys`) *and* its hash
matches the desired one. Thus a second apply sends no load-* at all (no SA flaps), and a charon
restarted without our files, or a hand-made change to a connection name we own, is repaired.

swanctl.conf and /etc/strongswan.d/appliance.conf are written too, so that a reboot without the
appliance (`swanctl --load-all` in strongswan.service) restores the same state, and a restore
after a failed apply reloads the previous files the same way.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath
from typing import Any

from ..render.ipsec import CHARON_CONF_PATH, SWANCTL_CONF_PATH
from ..render.spec import CredentialFile, DesiredState, IpsecSpec, RenderedFile, SharedSecret
from .base import (
    CHANGE,
    CREATE,
    REMOVE,
    Change,
    Context,
    DriverError,
    file_change,
    file_differs,
    file_restore,
    file_snapshot,
    find_file,
    service_call,
    write_rendered,
)

SUBSYSTEM = "ipsec"
SERVICE = "strongswan"
SOCKET_WAIT_S = 60.0  # TCG is slow: charon needs seconds to open its socket

# apply order of the payload kinds: files first (certificates and keys too), so that a charon
# started here reads our strongswan.d and its `swanctl --load-all` finds every file swanctl.conf names
_STEPS = ("file", "cred_file", "start", "restart", "unload_conn", "forget_conn", "unload_shared", "drop_cred", "cred",
          "shared", "conn")  # fmt: skip


class CharonUnreachable(Exception):
    """charon's VICI socket does not answer (not running, or still starting)."""


def default_connect():
    """A vici.Session on APPLIANCE_VICI_SOCKET or /var/run/charon.vici (as `appliance show` does)."""
    from ..status import StatusError, _vici_session

    try:
        return _vici_session()
    except StatusError as e:
        raise CharonUnreachable(str(e)) from None


def _text(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, list):
        return [_text(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _text(v) for k, v in value.items()}
    return value


def conn_hash(conn: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(conn, sort_keys=True).encode()).hexdigest()


def fingerprint_matches(record: Any, fingerprint: str | None) -> bool:
    """A ledger record {"hmac": ...} of a secret against the secret's fingerprint now (Ledger.fingerprint)."""
    return isinstance(record, dict) and fingerprint is not None and record.get("hmac") == fingerprint


def _shared_bytes(s: SharedSecret) -> bytes:
    return json.dumps([s.type, s.data, list(s.owners)]).encode()


def shared_message(s: SharedSecret) -> dict[str, Any]:
    return {"id": s.id, "type": s.type, "data": s.data, "owners": list(s.owners)}


# --- algorithms (preflight) ---------------------------------------------------------------------

_SIMPLE = {
    "null": "NULL", "des": "DES_CBC", "3des": "3DES_CBC", "cast128": "CAST_CBC",
    "chacha20poly1305": "CHACHA20_POLY1305", "chacha20poly1305compat": "CHACHA20_POLY1305",
    "sha": "HMAC_SHA1_96", "sha1": "HMAC_SHA1_96", "sha1_160": "HMAC_SHA1_160",
    "sha256": "HMAC_SHA2_256_128", "sha2_256": "HMAC_SHA2_256_128",
    "sha256_96": "HMAC_SHA2_256_96", "sha2_256_96": "HMAC_SHA2_256_96",
    "sha384": "HMAC_SHA2_384_192", "sha2_384": "HMAC_SHA2_384_192",
    "sha512": "HMAC_SHA2_512_256", "sha2_512": "HMAC_SHA2_512_256",
    "md5": "HMAC_MD5_96", "md5_128": "HMAC_MD5_128",
    "aesxcbc": "AES_XCBC_96", "aescmac": "AES_CMAC_96", "camelliaxcbc": "CAMELLIA_XCBC_96",
    "prfsha1": "PRF_HMAC_SHA1", "prfsha256": "PRF_HMAC_SHA2_256", "prfsha384": "PRF_HMAC_SHA2_384",
    "prfsha512": "PRF_HMAC_SHA2_512", "prfmd5": "PRF_HMAC_MD5", "prfaesxcbc": "PRF_AES128_XCBC",
    "prfaescmac": "PRF_AES128_CMAC", "prfcamelliaxcbc": "PRF_CAMELLIA128_XCBC",
    "curve25519": "CURVE_25519", "x25519": "CURVE_25519", "curve448": "CURVE_448", "x448": "CURVE_448",
    "modp1024s160": "MODP_1024_160", "modp2048s224": "MODP_2048_224", "modp2048s256": "MODP_2048_256",
}  # fmt: skip
_ICV = {"8": "8", "64": "8", "12": "12", "96": "12", "16": "16", "128": "16", "": "16"}
_PATTERNS: tuple[tuple[re.Pattern[str], Callable[[re.Match[str]], str]], ...] = (
    (re.compile(r"aes(?:128|192|256)?"), lambda m: "AES_CBC"),
    (re.compile(r"aes(?:128|192|256)?ctr"), lambda m: "AES_CTR"),
    (re.compile(r"aes(?:128|192|256)?(gcm|ccm)(\d*)"), lambda m: f"AES_{m[1].upper()}_{_ICV.get(m[2], '?')}"),
    (re.compile(r"camellia(?:128|192|256)?"), lambda m: "CAMELLIA_CBC"),
    (re.compile(r"camellia(?:128|192|256)?ctr"), lambda m: "CAMELLIA_CTR"),
    (re.compile(r"(blowfish|serpent|twofish)(?:128|192|256)?"), lambda m: f"{m[1].upper()}_CBC"),
    (re.compile(r"modp(\d+)"), lambda m: f"MODP_{m[1]}"),
    (re.compile(r"ecp(\d+)"), lambda m: f"ECP_{m[1]}"),
    (re.compile(r"ecp(\d+)bp"), lambda m: f"ECP_{m[1]}_BP"),
)
_NOT_ALGORITHMS = {"none", "modpnone", "esn", "noesn"}


def charon_algorithm(keyword: str) -> str | None:
    """charon's name (as get-algorithms lists it) for a proposal keyword, None when unknown."""
    if keyword in _SIMPLE:
        return _SIMPLE[keyword]
    for pattern, name in _PATTERNS:
        m = pattern.fullmatch(keyword)
        if m:
            return name(m)
    return None


def missing_algorithms(session, spec: IpsecSpec) -> list[str]:
    """Proposal algorithms of the site that charon does not offer, e.g. ['aes256gcm16 (AES_GCM_16)'].

    strongSwan without libstrongswan-standard-plugins has no AES-GCM and no ECP (measured); charon
    would load the connection and every IKE exchange would fail. Unknown keywords are left to
    charon's own load-conn error.
    """
    offered: set[str] = set()
    for section in _text(session.get_algorithms()).values():
        if isinstance(section, dict):
            offered.update(section)
    missing: list[str] = []
    for conn in spec.connections.values():
        proposals = list(conn.get("proposals", []))
        for child in conn.get("children", {}).values():
            proposals += child.get("esp_proposals", [])
        for proposal in proposals:
            for keyword in str(proposal).lower().split("-"):
                if keyword in _NOT_ALGORITHMS or keyword == "default":
                    continue
                name = charon_algorithm(keyword)
                label = f"{keyword} ({name})"
                if name is not None and name not in offered and label not in missing:
                    missing.append(label)
    return missing


# --- the driver -----------------------------------------------------------------------------------


_PEM_HEADER, _PEM_FOOTER = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"


def _pem_to_der(pem: str) -> bytes | None:
    """What ssl.PEM_cert_to_DER_cert does, without importing ssl (0.06 s of every no-op apply
    under emulation)."""
    body = pem.strip()
    if not (body.startswith(_PEM_HEADER) and body.endswith(_PEM_FOOTER)):
        return None
    try:
        return base64.b64decode(body[len(_PEM_HEADER) : -len(_PEM_FOOTER)])
    except binascii.Error:
        return None


class IpsecDriver:
    name = SUBSYSTEM

    def __init__(self, ctx: Context, connect: Callable[[], Any] = default_connect) -> None:
        self.ctx, self.services, self._connect = ctx, ctx.services, connect
        self._session: Any = None

    # --- charon -----------------------------------------------------------------------------

    def session(self) -> Any | None:
        """The VICI session, or None when charon is not running."""
        if self._session is None:
            try:
                self._session = self._connect()
            except CharonUnreachable:
                return None
        return self._session

    def _vici(self, what: str, call: Callable[..., Any], *args: Any) -> Any:
        """Run one VICI call; charon's own error text goes into the DriverError."""
        from vici.exception import CommandException, SessionException

        try:
            return call(*args)
        except CommandException as e:
            raise DriverError(self.name, f"charon refused to {what}", str(e).removeprefix("Command failed: ")) from None
        except (SessionException, OSError) as e:
            self._session = None
            raise DriverError(self.name, f"lost charon's VICI socket while trying to {what}", str(e)) from None

    def _wait_for_charon(self) -> Any:
        self._session = None
        deadline = time.monotonic() + SOCKET_WAIT_S
        last = ""
        while time.monotonic() < deadline:
            try:
                self._session = self._connect()
                return self._session
            except CharonUnreachable as e:
                last = str(e)
            time.sleep(0.2)
        raise DriverError(self.name, f"charon's VICI socket did not answer within {SOCKET_WAIT_S:.0f} s", last)

    # --- desired ----------------------------------------------------------------------------

    def claims(self, desired: DesiredState) -> set[str]:
        return {SWANCTL_CONF_PATH, CHARON_CONF_PATH}

    @staticmethod
    def _files(desired: DesiredState) -> list[RenderedFile]:
        return [f for f in (find_file(desired, CHARON_CONF_PATH), find_file(desired, SWANCTL_CONF_PATH)) if f]

    def _credential_text(self, cred: CredentialFile) -> str:
        """The PEM named in the site file (absolute once the site is validated)."""
        if not cred.source or not os.path.isabs(cred.source):
            raise DriverError(self.name, f"{cred.kind} credential {cred.source!r}: need an absolute path")
        try:
            return Path(cred.source).read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise DriverError(self.name, f"cannot read {cred.source}", getattr(e, "strerror", None) or str(e)) from None

    def _vici_connections(self, spec: IpsecSpec, pems: dict[str, str]) -> dict[str, dict[str, Any]]:
        """load-conn dicts: VICI wants the certificates themselves where swanctl.conf names files."""

        def substitute(section: dict[str, Any]) -> dict[str, Any]:
            out = dict(section)
            for key in ("certs", "cacerts"):
                if key in out:
                    out[key] = [pems.get(str(name), name) for name in out[key]]
            return out

        result = {}
        for name, conn in spec.connections.items():
            conn = json.loads(json.dumps(conn))
            for side in ("local", "remote"):
                if isinstance(conn.get(side), dict):
                    conn[side] = substitute(conn[side])
            result[name] = conn
        return result

    # --- observe + diff ---------------------------------------------------------------------

    def _observe(self, session) -> dict[str, Any]:
        conns = _text(self._vici("list connections", session.get_conns)).get("conns", [])
        shared = _text(self._vici("list shared keys", session.get_shared)).get("keys", [])
        keys = _text(self._vici("list private keys", session.get_keys)).get("keys", [])
        certs = self._vici("list certificates", lambda: list(session.list_certs()))  # a generator: consume it
        return {
            "conns": set(conns),
            "shared": set(shared),
            "keys": set(keys),
            "certs": {bytes(c.get("data", b"")) for c in certs},
        }

    def diff(self, desired: DesiredState) -> list[Change]:
        spec = desired.ipsec
        ledger = self.ctx.ledger.section(self.name)
        owned_conns: dict[str, Any] = ledger.get("connections", {})
        owned_shared: dict[str, Any] = ledger.get("shared", {})
        owned_creds: dict[str, Any] = ledger.get("credentials", {})
        changes: list[Change] = []

        session = self.session()
        running = session is not None
        if not running:
            changes.append(
                Change(self.name, CREATE, "daemon", SERVICE, "start strongswan (charon)", payload=("start",))
            )
        seen = self._observe(session) if running else {"conns": set(), "shared": set(), "keys": set(), "certs": set()}

        for f in self._files(desired):
            c = file_change(self.ctx, self.name, f)
            if c is None:
                continue
            c.payload = ("file", f)
            changes.append(c)
            if f.path == CHARON_CONF_PATH and running:
                changes.append(
                    Change(
                        self.name,
                        CHANGE,
                        "daemon",
                        SERVICE,
                        "restart strongswan (charon reads strongswan.d only at start)",
                        disruptive=True,
                        payload=("restart",),
                    )  # fmt: skip
                )

        pems: dict[str, str] = {}
        for cred in spec.credentials:
            text = self._credential_text(cred)
            name = PurePosixPath(cred.path).name
            private = cred.kind == "private"
            if cred.kind != "private":
                pems[name] = text
            record = owned_creds.get(cred.path, {})
            installed = file_differs(self.ctx, RenderedFile(cred.path, text, 0o600 if private else 0o644)) is None
            if private:
                fingerprint = self.ctx.ledger.fingerprint(text.encode())
                loaded = record.get("id") in seen["keys"] and fingerprint_matches(record.get("hash"), fingerprint)
            else:
                loaded = _pem_to_der(text) in seen["certs"] and record.get("hash") == conn_hash({"pem": text})
            if installed and loaded:
                continue
            what = {"x509ca": "CA certificate", "x509": "certificate", "private": "private key"}.get(
                cred.kind, cred.kind
            )
            action = CHANGE if cred.path in owned_creds else CREATE
            changes.append(
                Change(
                    self.name,
                    action,
                    "credential",
                    cred.path,
                    f"install and load {what} {cred.path}",
                    payload=("cred", cred, text),
                )  # fmt: skip
            )

        for s in spec.secrets:
            fingerprint = self.ctx.ledger.fingerprint(_shared_bytes(s))
            if s.id in seen["shared"] and fingerprint_matches(owned_shared.get(s.id), fingerprint):
                continue
            action = CHANGE if s.id in seen["shared"] else CREATE
            changes.append(
                Change(self.name, action, "shared-key", s.id, f"load IPsec shared key {s.id}", payload=("shared", s))
            )

        wanted = self._vici_connections(spec, pems)
        for name, conn in wanted.items():
            h = conn_hash(conn)
            if name in seen["conns"] and owned_conns.get(name) == h:
                continue
            if name in seen["conns"]:
                desc, action, disruptive = f"reload IPsec connection {name}", CHANGE, True
            else:
                desc, action, disruptive = f"load IPsec connection {name}", CREATE, False
            changes.append(
                Change(
                    self.name,
                    action,
                    "connection",
                    name,
                    desc,
                    detail=json.dumps(spec.connections[name], indent=1, sort_keys=True),
                    disruptive=disruptive,
                    payload=("conn", name, conn, h),
                )  # fmt: skip
            )

        for name in sorted(set(owned_conns) - set(wanted)):
            if name in seen["conns"] or not running:
                changes.append(
                    Change(
                        self.name,
                        REMOVE,
                        "connection",
                        name,
                        f"unload IPsec connection {name}",
                        disruptive=True,
                        payload=("unload_conn", name),
                    )  # fmt: skip
                )
            else:
                changes.append(Change(self.name, REMOVE, "ledger", name, f"forget IPsec connection {name}",
                                      payload=("forget_conn", name)))  # fmt: skip
        for sid in sorted(set(owned_shared) - {s.id for s in spec.secrets}):
            changes.append(
                Change(
                    self.name,
                    REMOVE,
                    "shared-key",
                    sid,
                    f"unload IPsec shared key {sid}",
                    payload=("unload_shared", sid),
                )  # fmt: skip
            )
        for path in sorted(set(owned_creds) - {c.path for c in spec.credentials}):
            changes.append(
                Change(
                    self.name,
                    REMOVE,
                    "credential",
                    path,
                    f"remove {path}",
                    payload=("drop_cred", path, owned_creds[path].get("id")),
                )  # fmt: skip
            )
        return changes

    # --- apply ------------------------------------------------------------------------------

    def _secret_record(self, data: bytes) -> dict[str, Any]:
        return {"hmac": self.ctx.ledger.fingerprint(data, create=True)}

    def _record(self, kind: str, key: str, value: Any) -> None:
        section = self.ctx.ledger.section(self.name).setdefault(kind, {})
        if value is None:
            section.pop(key, None)
        else:
            section[key] = value
        self.ctx.ledger.save()

    def apply(self, changes: list[Change]) -> None:
        order = {step: i for i, step in enumerate(_STEPS)}
        # a credential is installed as a file before charon (re)starts, and loaded over VICI after
        steps = [c.payload for c in changes]
        steps += [("cred_file", *p[1:]) for p in steps if p[0] == "cred"]
        payloads = sorted(steps, key=lambda p: order.get(p[0], len(_STEPS)))
        for payload in payloads:
            step = payload[0]
            if step == "start":
                self._service("start")
                continue
            if step == "restart":
                self._service("restart")
                continue
            if step == "file":
                write_rendered(self.ctx, payload[1])
                continue
            if step == "forget_conn":
                self._record("connections", payload[1], None)
                continue
            if step == "drop_cred":
                self._drop_credential(payload[1], payload[2])
                continue
            if step == "cred_file":
                self._install_credential(payload[1], payload[2])
                continue
            session = self.session() or self._wait_for_charon()
            if step == "unload_conn":
                name = payload[1]
                if name in set(_text(self._vici("list connections", session.get_conns)).get("conns", [])):
                    self._vici(f"unload connection {name}", session.unload_conn, {"name": name})
                self._record("connections", name, None)
            elif step == "unload_shared":
                sid = payload[1]
                if sid in set(_text(self._vici("list shared keys", session.get_shared)).get("keys", [])):
                    self._vici(f"unload shared key {sid}", session.unload_shared, {"id": sid})
                self._record("shared", sid, None)
            elif step == "cred":
                self._load_credential(session, payload[1], payload[2])
            elif step == "shared":
                s: SharedSecret = payload[1]
                self._record("shared", s.id, {"pending": True})  # write-ahead: owned, state unknown
                self._vici(f"load shared key {s.id}", session.load_shared, shared_message(s))
                self._record("shared", s.id, self._secret_record(_shared_bytes(s)))
            elif step == "conn":
                _, name, conn, h = payload
                self._record("connections", name, "pending")
                self._vici(f"load connection {name}", session.load_conn, {name: conn})
                self._record("connections", name, h)

    def _service(self, verb: str) -> None:
        service_call(self.services, self.name, verb, SERVICE)
        self._wait_for_charon()

    def _install_credential(self, cred: CredentialFile, text: str) -> None:
        private = cred.kind == "private"
        self._record("credentials", cred.path, {"pending": True})  # write-ahead: owned, state unknown
        write_rendered(self.ctx, RenderedFile(cred.path, text, 0o600 if private else 0o644, secret=private))

    def _load_credential(self, session, cred: CredentialFile, text: str) -> None:
        private = cred.kind == "private"
        if private:
            key_type = cred.key_type or "any"
            message = {"type": key_type, "data": text}
            reply = _text(self._vici(f"load private key {cred.path}", session.load_key, message))
            self._record("credentials", cred.path, {"id": reply.get("id"), "hash": self._secret_record(text.encode())})
        else:
            flag = "CA" if cred.kind == "x509ca" else "NONE"
            message = {"type": "x509", "flag": flag, "data": text}
            self._vici(f"load certificate {cred.path}", session.load_cert, message)
            self._record("credentials", cred.path, {"hash": conn_hash({"pem": text})})

    def _drop_credential(self, path: str, key_id: str | None) -> None:
        """A credential the site no longer names: remove our copy; unload a key (certs stay till restart)."""
        session = self.session()
        if key_id and session is not None:
            if key_id in set(_text(self._vici("list private keys", session.get_keys)).get("keys", [])):
                self._vici(f"unload private key {path}", session.unload_key, {"id": key_id})
        self.ctx.path(path).unlink(missing_ok=True)
        self._record("credentials", path, None)

    # --- verify, snapshot, restore ----------------------------------------------------------

    def verify(self, desired: DesiredState) -> None:
        left = [c.description for c in self.diff(desired)]
        if left:
            raise DriverError(self.name, "still differs after apply: " + ", ".join(left))

    def _paths(self, desired: DesiredState, extra: Iterable[str] = ()) -> list[str]:
        owned = self.ctx.ledger.section(self.name).get("credentials", {})
        return sorted(
            {SWANCTL_CONF_PATH, CHARON_CONF_PATH, *(c.path for c in desired.ipsec.credentials), *owned, *extra}
        )

    def snapshot(self, desired: DesiredState) -> dict[str, Any]:
        return {
            "files": file_snapshot(self.ctx, self._paths(desired)),
            "running": self.session() is not None,
            "ledger": json.loads(json.dumps(self.ctx.ledger.section(self.name))),
        }

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Put the files back and have charon load them, as strongswan.service does at boot.

        `swanctl --load-all` (the service's reload) also unloads connections missing from the
        restored files. Certificates loaded meanwhile stay in charon's memory until it restarts.
        """
        changed = file_snapshot(self.ctx, list(snapshot["files"])) != snapshot["files"]
        file_restore(self.ctx, snapshot["files"])
        running = self.session() is not None
        try:
            if not snapshot["running"]:
                if running:
                    self.services.stop(SERVICE)
                    self._session = None
            elif changed or self.ctx.ledger.section(self.name) != snapshot["ledger"]:
                self.services.reload(SERVICE)
        except Exception as e:
            raise DriverError(self.name, "cannot restore strongswan", str(e)) from None
        self.ctx.ledger.replace_section(self.name, snapshot["ledger"])
