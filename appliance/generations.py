"""The appliance's own state under /var/lib/appliance: generations, the apply lock, the journal.

- A generation is recorded only after an apply verified: `generations/<N>/` holds the site file
  as given, the applied DesiredState (`desired.json`, with secrets: 0600 in a 0700 directory) and
  the ledger at that moment. `rollback N` re-applies N's desired state and records a new generation.
- The lock is an flock on `lock`: the kernel drops it when its holder dies, so a stale lock cannot
  block anyone; the pid written into it lets the next apply say whose apply died.
- The journal (`journal.json`) exists while an apply runs. Found at start, it means the previous
  apply was killed: the new one says so and converges (every driver diffs the running state).
- `pending-confirm.json` exists between `apply --confirm` and `confirm` (or the automatic rollback).
- A generation applied from a site file also holds `inputs.json`: what loading the site read (its
  path, the variables and files it names) and an HMAC of all of it, values included, under
  `inputs.key` (random, this machine's, 0600). An apply or plan whose inputs give the same HMAC
  reuses the generation's DesiredState (reuse.py); secret values enter only the HMAC.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .boxkey import read_key
from .desired_json import from_data, to_data
from .files import atomic_write
from .render.spec import DesiredState

STATE_DIR = Path(os.environ.get("APPLIANCE_STATE_DIR", "/var/lib/appliance"))
KEEP_GENERATIONS = 30
# How long a command waits for the supervisor's drift repair to release the lock (a repair re-applies
# one subsystem: seconds on a box, a minute or two under emulation).
REPAIR_WAIT_S = 180.0


class StateError(Exception):
    """The state directory cannot be used (locked by a live apply, unreadable, unknown generation)."""


@dataclass(frozen=True)
class Generation:
    number: int
    path: Path
    meta: dict[str, Any]

    @property
    def created(self) -> str:
        return self.meta.get("created", "?")

    def desired(self) -> DesiredState:
        return from_data(json.loads((self.path / "desired.json").read_text()))

    def readable_desired(self) -> DesiredState | None:
        """desired(), or None when desired.json is missing or damaged."""
        try:
            return self.desired()
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            return None

    def inputs(self) -> dict[str, Any] | None:
        """inputs.json (reuse.py), or None when the generation has none or it is damaged."""
        try:
            data = json.loads((self.path / "inputs.json").read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def ledger(self) -> dict[str, Any]:
        try:
            return json.loads((self.path / "ledger.json").read_text())
        except FileNotFoundError:
            return {}


def _write_json(path: Path, data: Any, mode: int = 0o600, sort_keys: bool = True) -> None:
    atomic_write(path, json.dumps(data, indent=1, sort_keys=sort_keys) + "\n", mode=mode)


def _write_desired(generation: Path, desired: DesiredState) -> None:
    # In the renderers' key order: reused or rolled back, the state is the rendered one to the
    # order of the keys in the VICI and nftables messages the drivers send from it.
    _write_json(generation / "desired.json", to_data(desired), sort_keys=False)


class StateDir:
    def __init__(self, root: Path | str = STATE_DIR) -> None:
        self.root = Path(root)

    def ensure(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.root, 0o700)

    # --- lock and journal ---------------------------------------------------------------------

    @contextmanager
    def locked(self, what: str, wait_s: float = 0.0) -> Iterator[str | None]:
        """Hold the apply lock; yields a message about a dead predecessor's journal, or None."""
        self.ensure()
        fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        started = time.monotonic()
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
                    # the supervisor's drift repair is short and automatic: wait for it rather than
                    # fail the engineer's command
                    patience = max(wait_s, REPAIR_WAIT_S) if holder.endswith(" repair") else wait_s
                    if time.monotonic() - started >= patience:
                        raise StateError(
                            f"another apply is running (pid {holder}); try again when it has finished"
                        ) from None
                    time.sleep(0.2)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {what}\n".encode(), 0)
            yield self._interrupted_message()
        finally:
            os.close(fd)  # closing drops the flock

    def _interrupted_message(self) -> str | None:
        journal = self.read_journal()
        if journal is None:
            return None
        return (
            f"the previous {journal.get('what', 'apply')} (pid {journal.get('pid')}, started {journal.get('started')}) "
            f"was interrupted during {journal.get('step') or 'its start'}; converging to the requested state"
        )

    def read_journal(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.root / "journal.json").read_text())
        except FileNotFoundError:
            return None
        except json.JSONDecodeError:
            return {"what": "apply", "pid": "?", "started": "?", "step": "?"}

    def write_journal(self, data: dict[str, Any]) -> None:
        _write_json(self.root / "journal.json", data)

    def clear_journal(self) -> None:
        (self.root / "journal.json").unlink(missing_ok=True)

    # --- generations --------------------------------------------------------------------------

    @property
    def generations_dir(self) -> Path:
        return self.root / "generations"

    def generations(self) -> list[Generation]:
        out = []
        if not self.generations_dir.is_dir():
            return out
        for d in self.generations_dir.iterdir():
            if not d.name.isdigit() or not (d / "meta.json").exists():
                continue  # a directory without meta.json was never completed
            out.append(Generation(int(d.name), d, json.loads((d / "meta.json").read_text())))
        return sorted(out, key=lambda g: g.number)

    def current(self) -> Generation | None:
        gens = self.generations()
        return gens[-1] if gens else None

    def get(self, number: int) -> Generation:
        for g in self.generations():
            if g.number == number:
                return g
        raise StateError(f"no generation {number} (appliance generations lists them)")

    def record(
        self,
        desired: DesiredState,
        ledger: dict[str, Any],
        site_text: str | None,
        meta: dict[str, Any],
        inputs: dict[str, Any] | None = None,
    ) -> Generation:
        """Write a complete generation; meta.json last, so a half-written one is never listed."""
        self.ensure()
        current = self.current()
        number = (current.number if current else 0) + 1
        d = self.generations_dir / str(number)
        if d.exists():
            shutil.rmtree(d)  # left over from a killed record: never listed (no meta.json)
        d.mkdir(parents=True, mode=0o700)
        if site_text is not None:
            atomic_write(d / "site.yaml", site_text, mode=0o600)
        _write_desired(d, desired)
        _write_json(d / "ledger.json", ledger)
        if inputs is not None:
            _write_json(d / "inputs.json", inputs)
        full_meta = {"number": number, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **meta}
        _write_json(d / "meta.json", full_meta)
        self._prune()
        return Generation(number, d, full_meta)

    def note_inputs(self, desired: DesiredState, inputs: dict[str, Any]) -> bool:
        """After an apply that recorded no generation: when the current one holds exactly `desired`,
        `inputs` become its inputs (a comment edited, the appliance upgraded: the next apply reuses it)."""
        current = self.current()
        if current is None or current.inputs() == inputs or current.readable_desired() != desired:
            return False  # nothing to note (a reused state: the same inputs), or another state
        _write_desired(current.path, desired)  # the same state, in key order (older ones sorted keys)
        _write_json(current.path / "inputs.json", inputs)
        return True

    def inputs_key(self, create: bool = False) -> bytes | None:
        """This machine's key for the HMAC in inputs.json (boxkey.py); None when there is none or it
        is unreadable (not root), unless `create` (an apply, holding the lock) makes one."""
        if create:
            self.ensure()
        return read_key(self.root, create)

    def _prune(self) -> None:
        gens = self.generations()
        for g in gens[:-KEEP_GENERATIONS]:
            shutil.rmtree(g.path, ignore_errors=True)

    # --- commit-confirm -----------------------------------------------------------------------

    @property
    def pending_path(self) -> Path:
        return self.root / "pending-confirm.json"

    def pending(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.pending_path.read_text())
        except FileNotFoundError:
            return None

    def set_pending(self, data: dict[str, Any]) -> None:
        _write_json(self.pending_path, data)

    def clear_pending(self) -> None:
        self.pending_path.unlink(missing_ok=True)
