"""This box's own random key (`/var/lib/appliance/inputs.key`, 0600), under which the state
directory records what secrets were used without holding them: the HMAC over a site's inputs
(reuse.py) and the fingerprints of the secrets a driver loaded (the ledger). A plain or salted hash
of a weak PSK falls to a dictionary once a ledger or a generation is copied off the box; an HMAC
under a key that stays on it does not, and costs microseconds where scrypt cost 0.3 s of every
no-op apply in the emulated lab.
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path

from .files import atomic_write

KEY_FILE = "inputs.key"  # its first use was the inputs' HMAC: the name stays, keys already exist
KEY_BYTES = 32


def read_key(state_root: Path, create: bool = False) -> bytes | None:
    """The key in `state_root`; None when there is none or it is unreadable (not root), unless
    `create` (a writer holding the apply lock) makes one. A damaged key is replaced: what was
    recorded under it no longer matches, so the next apply loads and records again."""
    path = Path(state_root) / KEY_FILE
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        key = b""
    except OSError:
        return None
    if len(key) == KEY_BYTES:
        return key
    if not create:
        return None
    key = os.urandom(KEY_BYTES)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write(path, key, mode=0o600)
    return key


def fingerprint(key: bytes, data: bytes) -> str:
    return hmac.new(key, data, "sha256").hexdigest()
