"""The lab daemon: one per lab, detached; owns QEMU and virtiofsd and relays commands to the guest.

`python -m appliance.lab.daemon STATE_DIR` reads STATE_DIR/vm.json (written by `lab up`), starts
virtiofsd and QEMU, connects to the guest agent's virtio-serial port and serves STATE_DIR/lab.sock
to `appliance lab exec/status/down` clients: JSON lines, many clients and requests at once (each
forwarded request gets a fresh id, so answers find their way back whatever their order). It exits
when QEMU does, removing its socket, so a stale socket never looks like a running lab.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

BOOT_TIMEOUT_S = 180  # TCG on two shared cores: normally ~10 s, allow for a loaded machine
STOP_TIMEOUT_S = 15


class LabDaemon:
    def __init__(self, state: Path) -> None:
        self.state = state
        self.spec = json.loads((state / "vm.json").read_text())
        self.socket = state / "lab.sock"
        self.agent_writer: asyncio.StreamWriter | None = None
        self.pending: dict[int, asyncio.Future] = {}
        self.next_id = 0
        self.ready = asyncio.Event()
        self.started = time.time()
        self.ready_after: float | None = None
        self.guest_uptime: float | None = None
        self.qemu: asyncio.subprocess.Process | None = None
        self.virtiofsd: asyncio.subprocess.Process | None = None
        self.stopping = False

    def log(self, message: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)

    async def run(self) -> int:
        vfs_socket = Path(self.spec["vfs_socket"])
        ctl_socket = Path(self.spec["control_socket"])
        for stale in (vfs_socket, ctl_socket, self.socket):
            stale.unlink(missing_ok=True)
        with open(self.state / "virtiofsd.log", "ab") as vlog:
            self.virtiofsd = await asyncio.create_subprocess_exec(
                *self.spec["virtiofsd"], stdin=asyncio.subprocess.DEVNULL, stdout=vlog, stderr=vlog
            )
        if not await self._wait_path(vfs_socket, 10):
            self.log("virtiofsd did not create its socket; see virtiofsd.log")
            await self._terminate(self.virtiofsd)
            return 1
        with open(self.state / "qemu.log", "ab") as qlog:
            self.qemu = await asyncio.create_subprocess_exec(
                *self.spec["qemu"], stdin=asyncio.subprocess.DEVNULL, stdout=qlog, stderr=qlog
            )
        self._write_pids()
        self.log(f"qemu {self.qemu.pid} ({self.spec['accel']}), virtiofsd {self.virtiofsd.pid}")
        if not await self._wait_path(ctl_socket, 10):
            self.log("qemu did not open the control port; see qemu.log")
            await self.shutdown()
            return 1
        try:
            reader, self.agent_writer = await self._connect(ctl_socket)
        except OSError as e:
            self.log(f"cannot connect to qemu's control port: {e}")
            await self.shutdown()
            return 1
        server = await asyncio.start_unix_server(self.serve_client, str(self.socket), limit=64 << 20)
        os.chmod(self.socket, 0o600)
        tasks = [
            asyncio.create_task(self.read_agent(reader)),
            asyncio.create_task(self.qemu.wait()),
            asyncio.create_task(self.boot_watchdog()),
        ]
        await asyncio.wait(tasks[:2], return_when=asyncio.FIRST_COMPLETED)
        server.close()
        self.socket.unlink(missing_ok=True)
        await self.shutdown()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.log(f"qemu exited with {self.qemu.returncode}")
        return 0

    def _write_pids(self) -> None:
        pids = {"daemon": os.getpid(), "qemu": self.qemu.pid, "virtiofsd": self.virtiofsd.pid}
        (self.state / "pids.json").write_text(json.dumps(pids) + "\n")

    @staticmethod
    async def _connect(path: Path) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """qemu creates the socket file before it listens: retry a refused connection briefly."""
        for _ in range(100):
            try:
                return await asyncio.open_unix_connection(str(path), limit=64 << 20)
            except ConnectionRefusedError:
                await asyncio.sleep(0.05)
        return await asyncio.open_unix_connection(str(path), limit=64 << 20)

    @staticmethod
    async def _wait_path(path: Path, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if path.exists():
                return True
            await asyncio.sleep(0.05)
        return False

    async def boot_watchdog(self) -> None:
        try:
            await asyncio.wait_for(self.ready.wait(), BOOT_TIMEOUT_S)
        except TimeoutError:
            self.log(f"the guest agent did not start within {BOOT_TIMEOUT_S} s; see console.log; stopping")
            await self.shutdown()

    async def read_agent(self, reader: asyncio.StreamReader) -> None:
        while True:
            line = await reader.readline()
            if not line:
                self.log("control port closed")
                return
            try:
                message = json.loads(line)
            except ValueError:
                self.log(f"unreadable line from the agent: {line[:200]!r}")
                continue
            if message.get("event") == "ready":
                self.guest_uptime = message.get("uptime")
                self.ready_after = time.time() - self.started
                self.log(f"agent ready after {self.ready_after:.1f} s (guest uptime {self.guest_uptime} s)")
                self.ready.set()
                continue
            future = self.pending.pop(message.get("id"), None)
            if future is not None and not future.done():
                future.set_result(message)

    async def ask_agent(self, request: dict[str, Any]) -> dict[str, Any]:
        if not self.ready.is_set():
            try:
                await asyncio.wait_for(self.ready.wait(), BOOT_TIMEOUT_S)
            except TimeoutError:
                return {"error": "the VM did not come up"}
        self.next_id += 1
        rid = self.next_id
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self.pending[rid] = future
        self.agent_writer.write((json.dumps({**request, "id": rid}) + "\n").encode())
        await self.agent_writer.drain()
        reply = await future
        reply.pop("id", None)
        return reply

    def status(self) -> dict[str, Any]:
        return {
            "state": "ready" if self.ready.is_set() else ("stopping" if self.stopping else "booting"),
            "accel": self.spec["accel"],
            "pid": os.getpid(),
            "qemu_pid": self.qemu.pid if self.qemu else None,
            "started": self.started,
            "ready_after_s": self.ready_after,
            "guest_uptime_at_ready_s": self.guest_uptime,
        }

    async def serve_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                try:
                    request = json.loads(line)
                except ValueError as e:
                    reply = {"error": f"bad request: {e}"}
                else:
                    reply = await self.dispatch(request)
                writer.write((json.dumps(reply) + "\n").encode())
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def dispatch(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "status":
            return self.status()
        if op == "wait-ready":
            try:
                await asyncio.wait_for(self.ready.wait(), float(request.get("timeout", BOOT_TIMEOUT_S)))
            except TimeoutError:
                return {"error": "not ready", **self.status()}
            return self.status()
        if op == "down":
            asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(self.shutdown()))
            return {"rc": 0}
        if op in ("exec", "syslog", "ping"):
            return await self.ask_agent(request)
        return {"error": f"unknown op {op!r}"}

    async def shutdown(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        if self.qemu and self.qemu.returncode is None and self.ready.is_set() and self.agent_writer:
            with contextlib.suppress(Exception):  # the agent powers the guest off (sysrq)
                self.agent_writer.write(b'{"id": 0, "op": "poweroff"}\n')
                await self.agent_writer.drain()
                await asyncio.wait_for(self.qemu.wait(), STOP_TIMEOUT_S)
        await self._terminate(self.qemu)
        await self._terminate(self.virtiofsd)
        for future in self.pending.values():
            if not future.done():
                future.set_result({"error": "the lab VM stopped"})

    @staticmethod
    async def _terminate(proc: asyncio.subprocess.Process | None) -> None:
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 5)
        except TimeoutError:
            proc.kill()
            await proc.wait()


def main(argv: list[str]) -> int:
    state = Path(argv[1])
    daemon = LabDaemon(state)
    loop = asyncio.new_event_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: asyncio.ensure_future(daemon.shutdown()))
    try:
        return loop.run_until_complete(daemon.run())
    finally:
        (state / "lab.sock").unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
