"""The lab VM's control agent: JSON lines over a virtio-serial port (standard library only).

Requests carry an id and may run concurrently; each is answered by one line with the same id:
  {"id": 7, "op": "exec", "argv": [...], "node": "hub"|null, "stdin": "...", "env": {}, "timeout": 60}
      -> {"id": 7, "rc": 0, "stdout": "...", "stderr": "..."}
  {"id": 8, "op": "syslog", "socket": PATH, "file": PATH} -> {"id": 8, "rc": 0}: a syslog receiver
  {"id": 9, "op": "ping"} -> {"id": 9, "rc": 0, "uptime": 12.3}
  {"id": 10, "op": "poweroff"}
At start the agent sends {"event": "ready", "uptime": ...}. A virtio-serial port never drops or
reorders bytes and needs no network device, so the VM stays without any link to the outside.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

NODE_NS = "/run/lab/ns"  # persistent mount and UTS namespaces of the nodes (see appliance/lab/build.py)
BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "TERM": "dumb",
}
PIPE_GRACE_S = 2.0  # a daemon started by the command may keep our pipes open: do not wait for it


def uptime() -> float:
    with open("/proc/uptime") as f:
        return float(f.read().split()[0])


class Agent:
    def __init__(self, device: str) -> None:
        fd = os.open(device, os.O_RDWR)
        self.reader = os.fdopen(fd, "rb", buffering=0)
        self.writer = os.fdopen(os.dup(fd), "wb", buffering=0)
        self.write_lock = threading.Lock()

    def send(self, message: dict) -> None:
        data = (json.dumps(message) + "\n").encode()
        with self.write_lock:
            view = memoryview(data)
            while view:
                n = self.writer.write(view)
                view = view[n:]

    def serve(self) -> None:
        self.send({"event": "ready", "uptime": uptime()})
        buffer = b""
        while True:
            chunk = self.reader.read(65536)
            if not chunk:  # host side not connected: the port reads EOF; try again shortly
                time.sleep(0.05)
                continue
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                if line.strip():
                    threading.Thread(target=self.handle, args=(line,), daemon=True).start()

    def handle(self, line: bytes) -> None:
        try:
            request = json.loads(line)
        except ValueError as e:
            self.send({"id": None, "error": f"bad request: {e}"})
            return
        rid = request.get("id")
        try:
            op = request.get("op")
            if op == "exec":
                reply = run(request)
            elif op == "syslog":
                start_syslog(request["socket"], request["file"])
                reply = {"rc": 0}
            elif op == "ping":
                reply = {"rc": 0, "uptime": uptime()}
            elif op == "poweroff":
                self.send({"id": rid, "rc": 0})
                os.sync()
                with open("/proc/sysrq-trigger", "w") as f:
                    f.write("o")
                return
            else:
                reply = {"error": f"unknown op {op!r}"}
        except Exception as e:  # the agent must answer every request, whatever went wrong
            reply = {"error": f"{type(e).__name__}: {e}"}
        reply["id"] = rid
        self.send(reply)


def node_argv(node: str, argv: list) -> list:
    ns = f"{NODE_NS}/{node}"
    if not os.path.exists(f"/run/netns/{node}"):
        raise LookupError(f"no node {node!r} in this lab")
    return ["nsenter", f"--net=/run/netns/{node}", f"--mount={ns}.mnt", f"--uts={ns}.uts", "--", *argv]


def run(request: dict) -> dict:
    argv = list(request["argv"])
    if request.get("node"):
        argv = node_argv(request["node"], argv)
    env = dict(BASE_ENV, **(request.get("env") or {}))
    stdin = request.get("stdin")
    timeout = request.get("timeout")
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd="/",
            env=env,
            start_new_session=True,
        )
    except OSError as e:
        return {"rc": 127, "stdout": "", "stderr": f"{argv[0]}: {e.strerror}\n"}
    out: dict = {"stdout": b"", "stderr": b""}

    def drain(name: str, stream) -> None:
        chunks = []
        for chunk in iter(lambda: stream.read1(65536), b""):
            chunks.append(chunk)
            out[name] = b"".join(chunks)

    readers = [
        threading.Thread(target=drain, args=(n, s), daemon=True)
        for n, s in (("stdout", proc.stdout), ("stderr", proc.stderr))
    ]
    for r in readers:
        r.start()
    if stdin is not None:
        try:
            proc.stdin.write(stdin.encode())
            proc.stdin.close()
        except BrokenPipeError:
            pass
    timed_out = False
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGKILL)
        rc = proc.wait()
    for r in readers:
        r.join(PIPE_GRACE_S)
    stderr = out["stderr"].decode(errors="replace")
    if timed_out:
        rc = 124
        stderr += f"\nlab agent: killed after {timeout} s\n"
    return {"rc": rc, "stdout": out["stdout"].decode(errors="replace"), "stderr": stderr}


def start_syslog(path: str, logfile: str) -> None:
    """Receive syslog datagrams on path (a node's /run/log.sock, which /dev/log points to)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    os.chmod(path, 0o666)  # FRR's daemons log as user frr

    def receive() -> None:
        with open(logfile, "ab", buffering=0) as f:
            while True:
                data = sock.recv(65536)
                if data.startswith(b"<") and b">" in data[:5]:
                    data = data.split(b">", 1)[1]
                stamp = time.strftime("%H:%M:%S").encode()
                f.write(stamp + b" " + data.rstrip(b"\n\x00") + b"\n")

    threading.Thread(target=receive, daemon=True).start()


def prepare_vm() -> None:
    """What init.sh leaves to us: cheaper as system calls here than as execs there."""
    for d in ("/run/lock", "/run/netns"):
        os.makedirs(d, exist_ok=True)
    # Every node has its own /run, so this one link gives each node its own syslog socket.
    for link, target in (("/dev/fd", "/proc/self/fd"), ("/dev/log", "/run/log.sock")):
        if not os.path.lexists(link):
            os.symlink(target, link)
    with open("/proc/sys/kernel/hostname", "w") as f:
        f.write("labvm")


if __name__ == "__main__":
    prepare_vm()
    Agent(sys.argv[1]).serve()
