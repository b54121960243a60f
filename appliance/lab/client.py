"""Talking to a running lab's daemon (daemon.py) over its unix socket."""

from __future__ import annotations

import json
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import LabError

STATE_ROOT = Path("/run/appliance-lab")


@dataclass(frozen=True)
class ExecResult:
    rc: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.rc == 0

    @property
    def output(self) -> str:
        return (self.stdout + self.stderr).strip()


class LabClient:
    def __init__(self, name: str, state_root: Path = STATE_ROOT) -> None:
        self.name = name
        self.state = state_root / name
        self.socket = self.state / "lab.sock"

    def running(self) -> bool:
        try:
            self.request({"op": "status"}, timeout=5)
        except LabError:
            return False
        return True

    def request(self, message: Mapping[str, Any], timeout: float | None = 60) -> dict[str, Any]:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(str(self.socket))
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            raise LabError(f"lab {self.name!r} is not running (no daemon on {self.socket})") from None
        try:
            sock.sendall((json.dumps(dict(message)) + "\n").encode())
            buffer = bytearray()
            while not buffer.endswith(b"\n"):
                chunk = sock.recv(1 << 20)
                if not chunk:
                    raise LabError(f"lab {self.name!r}: the daemon closed the connection")
                buffer += chunk
        except TimeoutError:
            raise LabError(f"lab {self.name!r}: no answer within {timeout:.0f} s") from None
        finally:
            sock.close()
        reply = json.loads(buffer)
        if "error" in reply:
            raise LabError(f"lab {self.name!r}: {reply['error']}")
        return reply

    def exec(
        self,
        node: str | None,
        argv: Sequence[str],
        stdin: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = 300,
    ) -> ExecResult:
        """Run argv in a node (None: in the VM itself); its output and exit code."""
        reply = self.request(
            {
                "op": "exec",
                "node": node,
                "argv": list(argv),
                "stdin": stdin,
                "env": dict(env or {}),
                "timeout": timeout,
            },
            timeout=timeout + 30,
        )
        return ExecResult(reply["rc"], reply.get("stdout", ""), reply.get("stderr", ""))

    def sh(self, node: str | None, script: str, timeout: float = 300) -> ExecResult:
        return self.exec(node, ["sh", "-c", script], timeout=timeout)

    def status(self) -> dict[str, Any]:
        return self.request({"op": "status"}, timeout=10)


def running_labs(state_root: Path = STATE_ROOT) -> list[str]:
    return sorted(
        p.parent.name for p in state_root.glob("*/lab.sock") if LabClient(p.parent.name, state_root).running()
    )
