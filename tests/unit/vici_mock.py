"""A charon stand-in that speaks the real VICI wire protocol (vici.protocol Packet/Message).

In the style of the vici package's own tests (a socketpair, one end a `vici.Session`), but the
server end answers like charon 5.9.8 does (replies and error texts measured against the real
daemon): it keeps loaded connections, shared keys, certificates and keys, and records every
request it received as (command, decoded message) so tests can assert the exact messages sent.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
import struct
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import vici
from vici.protocol import FiniteStream, Message, Packet, Transport

# What charon 5.9.8 with libstrongswan-standard-plugins offers (measured, trimmed to what tests use).
FULL_ALGORITHMS = {
    "encryption": {"AES_CBC": "aesni", "AES_CTR": "aesni", "3DES_CBC": "openssl", "CAMELLIA_CBC": "openssl"},
    "integrity": {"HMAC_SHA1_96": "openssl", "HMAC_SHA2_256_128": "openssl", "HMAC_SHA2_384_192": "openssl"},
    "aead": {"AES_GCM_8": "aesni", "AES_GCM_12": "aesni", "AES_GCM_16": "aesni", "CHACHA20_POLY1305": "openssl"},
    "prf": {"PRF_HMAC_SHA1": "openssl", "PRF_HMAC_SHA2_256": "openssl", "PRF_HMAC_SHA2_384": "openssl"},
    "dh": {"MODP_2048": "openssl", "MODP_3072": "openssl", "ECP_256": "openssl", "ECP_384": "openssl",
           "CURVE_25519": "openssl"},
}  # fmt: skip
# Without libstrongswan-standard-plugins: no GCM, no ECP (measured on a --no-install-recommends host).
BASIC_ALGORITHMS = {
    "encryption": {"AES_CBC": "aes", "3DES_CBC": "des"},
    "integrity": {"HMAC_SHA1_96": "hmac", "HMAC_SHA2_256_128": "hmac"},
    "prf": {"PRF_HMAC_SHA1": "hmac", "PRF_HMAC_SHA2_256": "hmac", "PRF_HMAC_SHA2_384": "hmac"},
    "dh": {"MODP_2048": "gmp", "MODP_3072": "gmp"},
}
KNOWN_PROPOSAL_WORDS = {"aes128", "aes256", "aes256gcm16", "aes128gcm16", "sha256", "sha384", "prfsha256",
                        "prfsha384", "ecp256", "ecp384", "modp2048", "modp3072", "x25519", "curve25519"}  # fmt: skip


def text(value: Any) -> Any:
    """A decoded VICI message with bytes turned into str (for readable assertions)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list):
        return [text(v) for v in value]
    if isinstance(value, dict):
        return {k: text(v) for k, v in value.items()}
    return value


class FakeCharon:
    def __init__(self, algorithms: dict[str, dict[str, str]] | None = None) -> None:
        self.algorithms = FULL_ALGORITHMS if algorithms is None else algorithms
        self.conns: dict[str, dict[str, Any]] = {}
        self.shared: dict[str, dict[str, Any]] = {}
        self.certs: list[tuple[str, bytes]] = []  # (flag, DER)
        self.keys: dict[str, str] = {}  # id -> PEM
        self.requests: list[tuple[str, Any]] = []
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self._lock = threading.Lock()

    # --- what tests look at -------------------------------------------------------------------

    def commands(self) -> list[str]:
        return [cmd for cmd, _ in self.requests]

    def sent(self, command: str) -> list[Any]:
        return [msg for cmd, msg in self.requests if cmd == command]

    def writes(self) -> list[str]:
        """Requests that change charon's state (everything but the read-only queries)."""
        readonly = {"get-conns", "get-shared", "get-keys", "list-certs", "get-algorithms", "version"}
        return [cmd for cmd in self.commands() if cmd not in readonly]

    def restart(self) -> None:
        """charon restarted without anyone loading the files: all state is gone."""
        self.conns.clear()
        self.shared.clear()
        self.certs.clear()
        self.keys.clear()

    # --- connections ---------------------------------------------------------------------------

    def connect(self) -> vici.Session:
        client, server = socket.socketpair(socket.AF_UNIX)
        self._serve_in_thread(server)
        self._sockets.append(client)
        return vici.Session(client)

    def listen(self, path: Path) -> None:
        """Serve on a unix socket at `path` (as charon does on /var/run/charon.vici)."""
        path.unlink(missing_ok=True)
        self._listener = socket.socket(socket.AF_UNIX)
        self._listener.bind(str(path))
        self._listener.listen(4)
        t = threading.Thread(target=self._accept, args=(self._listener,), daemon=True)
        t.start()
        self._threads.append(t)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            self._serve_in_thread(conn)

    def _serve_in_thread(self, sock: socket.socket) -> None:
        self._sockets.append(sock)
        t = threading.Thread(target=self._serve, args=(sock,), daemon=True)
        t.start()
        self._threads.append(t)

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
        for s in self._sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        for t in self._threads:
            t.join(timeout=5)

    # --- the protocol --------------------------------------------------------------------------

    def _serve(self, sock: socket.socket) -> None:
        transport = Transport(sock)
        while True:
            try:
                raw = transport.receive()
            except OSError:
                return
            stream = FiniteStream(raw)
            kind, length = struct.unpack("!BB", stream.read(2))
            name = stream.read(length).decode()
            rest = stream.read()
            message = text(Message.deserialize(FiniteStream(rest))) if rest else None
            if kind in (Packet.EVENT_REGISTER, Packet.EVENT_UNREGISTER):
                transport.send(struct.pack("!B", Packet.EVENT_CONFIRM))
                continue
            if kind != Packet.CMD_REQUEST:
                return
            with self._lock:
                self.requests.append((name, message))
                handler = getattr(self, "cmd_" + name.replace("-", "_"), None)
                if handler is None:
                    transport.send(struct.pack("!B", Packet.CMD_UNKNOWN))
                    continue
                events, reply = handler(message or {})
            for event_name, event in events:
                n = event_name.encode()
                transport.send(struct.pack("!BB", Packet.EVENT, len(n)) + n + Message.serialize(event))
            transport.send(struct.pack("!B", Packet.CMD_RESPONSE) + Message.serialize(reply))

    @staticmethod
    def _ok(**extra: Any) -> tuple[list, dict]:
        return [], OrderedDict([("success", "yes"), *extra.items()])

    @staticmethod
    def _fail(errmsg: str) -> tuple[list, dict]:
        return [], OrderedDict([("success", "no"), ("errmsg", errmsg)])

    def cmd_get_conns(self, msg):
        return [], {"conns": list(self.conns)}

    def cmd_load_conn(self, msg):
        for name, conn in msg.items():
            proposals = list(conn.get("proposals", []))
            for child in conn.get("children", {}).values():
                proposals += child.get("esp_proposals", [])
            for p in proposals:
                if any(word not in KNOWN_PROPOSAL_WORDS for word in p.split("-")):
                    return self._fail("invalid value for: proposals, config discarded")
            for side in ("local", "remote"):
                for cert in conn.get(side, {}).get("certs", []) + conn.get(side, {}).get("cacerts", []):
                    if "-----BEGIN CERTIFICATE-----" not in cert:  # a file name, as in swanctl.conf
                        return self._fail("invalid value for: certs, config discarded")
            self.conns[name] = conn
        return self._ok()

    def cmd_unload_conn(self, msg):
        name = msg.get("name")
        if name not in self.conns:
            return self._fail(f"unload: connection '{name}' not found")
        del self.conns[name]
        return self._ok()

    def cmd_load_shared(self, msg):
        self.shared[msg["id"]] = msg
        return self._ok()

    def cmd_unload_shared(self, msg):
        if self.shared.pop(msg.get("id"), None) is None:
            return self._fail(f"unable to unload shared key '{msg.get('id')}'")
        return self._ok()

    def cmd_get_shared(self, msg):
        return [], {"keys": list(self.shared)}

    def cmd_load_cert(self, msg):
        try:
            der = ssl.PEM_cert_to_DER_cert(msg["data"])
        except ValueError:
            return self._fail("parsing X509 certificate failed")
        self.certs = [(f, d) for f, d in self.certs if d != der] + [(msg.get("flag", "NONE"), der)]
        return self._ok()

    def cmd_list_certs(self, msg):
        events = [("list-cert", {"type": "X509", "flag": flag, "data": der}) for flag, der in self.certs]
        return events, {}

    def cmd_load_key(self, msg):
        if "PRIVATE KEY-----" not in msg.get("data", ""):
            return self._fail("loading private key failed")
        key_id = hashlib.sha1(msg["data"].encode()).hexdigest()
        self.keys[key_id] = msg["data"]
        return self._ok(id=key_id)

    def cmd_get_keys(self, msg):
        return [], {"keys": list(self.keys)}

    def cmd_unload_key(self, msg):
        if self.keys.pop(msg.get("id"), None) is None:
            return self._fail("key not found")
        return self._ok()

    def cmd_get_algorithms(self, msg):
        return [], self.algorithms
