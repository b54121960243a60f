"""Build the lab's nodes inside the VM from a plan on stdin (standard library only; see lab/build.py).

Under TCG every exec costs 0.1-0.3 s, so namespaces and mounts are made with system calls from
this one process instead of `ip netns add`, `unshare`, `mount` and `mkdir` per node: ~40 execs
per node would take longer than the whole boot. Links and addresses go through one `ip -batch`
per namespace. Single-threaded on purpose: it forks one child per node.
"""

import ctypes
import json
import os
import subprocess
import sys

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWNET = 0x00020000, 0x04000000, 0x40000000
MS_BIND, MS_REC, MS_PRIVATE, MS_SHARED = 4096, 16384, 1 << 18, 1 << 20
libc = ctypes.CDLL(None, use_errno=True)


def check(rc: int, what: str) -> None:
    if rc != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def mount(source: str, target: str, fstype: str | None, flags: int = 0, options: str | None = None) -> None:
    rc = libc.mount(
        source.encode(),
        target.encode(),
        fstype.encode() if fstype else None,
        flags,
        options.encode() if options else None,
    )
    check(rc, f"mount {source} on {target}")


def touch(path: str) -> None:
    os.close(os.open(path, os.O_CREAT | os.O_RDONLY, 0o644))


def prepare_root(root: str) -> None:
    """/run/netns shared (as `ip netns add` makes it), root/ns private: namespace files live there."""
    for d, propagation in (("/run/netns", MS_SHARED), (f"{root}/ns", MS_PRIVATE)):
        os.makedirs(d, exist_ok=True)
        if not os.path.ismount(d):
            mount(d, d, None, MS_BIND)
        mount("none", d, None, propagation)


def setup_inside(node: dict, root: str, frr_uid: int, frr_gid: int) -> None:
    """Runs in the node's fresh namespaces: hostname, /sys, private directories, sysctls."""
    name = node["name"]
    mount("none", "/", None, MS_REC | MS_PRIVATE)
    check(libc.sethostname(name.encode(), len(name.encode())), "sethostname")
    mount("sysfs", "/sys", "sysfs")  # /sys/class/net of this network namespace
    for key, value in node.get("sysctl", {}).items():
        with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
            f.write(value)
    if not node["private"]:
        return
    d = f"{root}/{name}"
    overlays = ("etc.upper", "etc.work", "lib.upper", "lib.work", "tmp.upper", "tmp.work")
    for sub in (*overlays, "log/frr", "run/frr", "run/lock"):
        os.makedirs(f"{d}/{sub}", exist_ok=True)
    for sub in ("log/frr", "run/frr"):
        os.chown(f"{d}/{sub}", frr_uid, frr_gid)
    mount("overlay", "/etc", "overlay", 0, f"lowerdir=/etc,upperdir={d}/etc.upper,workdir={d}/etc.work")
    mount("overlay", "/var/lib", "overlay", 0, f"lowerdir=/var/lib,upperdir={d}/lib.upper,workdir={d}/lib.work")
    mount(f"{d}/log", "/var/log", None, MS_BIND)
    # an overlay, not an empty tmpfs: a checkout under the host's /tmp (where a CI may clone) stays
    # visible, so the node can run the appliance from it; what the node writes stays its own
    mount("overlay", "/tmp", "overlay", 0, f"lowerdir=/tmp,upperdir={d}/tmp.upper,workdir={d}/tmp.work")
    with open("/etc/hostname", "w") as f:
        f.write(name + "\n")
    mount(f"{d}/run", "/run", None, MS_BIND)  # last: d lives under /run


def new_node(node: dict, root: str, frr_uid: int, frr_gid: int) -> None:
    """Fork a child into new net/mount/UTS namespaces, then pin them with bind mounts."""
    name = node["name"]
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        status = b"ok"
        try:
            os.close(ready_r)
            os.close(done_w)
            check(libc.unshare(CLONE_NEWNET | CLONE_NEWNS | CLONE_NEWUTS), "unshare")
            setup_inside(node, root, frr_uid, frr_gid)
        except Exception as e:
            status = f"{name}: {e}".encode()
        os.write(ready_w, status)
        os.read(done_r, 1)  # stay alive until the parent has pinned the namespaces
        os._exit(0)
    os.close(ready_w)
    os.close(done_r)
    status = os.read(ready_r, 4096).decode()
    try:
        if status != "ok":
            raise RuntimeError(status)
        for kind, target in (
            ("net", f"/run/netns/{name}"),
            ("mnt", f"{root}/ns/{name}.mnt"),
            ("uts", f"{root}/ns/{name}.uts"),
        ):
            touch(target)
            mount(f"/proc/{pid}/ns/{kind}", target, None, MS_BIND)
    finally:
        os.write(done_w, b"x")
        os.waitpid(pid, 0)


def ip_batch(netns: str | None, lines: list) -> None:
    if not lines:
        return
    argv = ["ip", *(["-n", netns] if netns else []), "-batch", "-"]
    proc = subprocess.run(argv, input="\n".join(lines) + "\n", capture_output=True, text=True)
    if proc.returncode != 0:
        where = f"node {netns}" if netns else "the VM"
        raise RuntimeError(f"ip -batch in {where}: {proc.stderr.strip()}")


def main() -> int:
    plan = json.load(sys.stdin)
    root = plan["root"]
    subprocess.run(["modprobe", "-a", *plan["modules"]], check=False)
    prepare_root(root)
    try:
        import pwd

        frr = pwd.getpwnam("frr")
        frr_uid, frr_gid = frr.pw_uid, frr.pw_gid
    except (ImportError, KeyError):
        frr_uid, frr_gid = 0, 0
    try:
        for node in plan["nodes"]:
            new_node(node, root, frr_uid, frr_gid)
        ip_batch(None, plan["links"])
        for node in plan["nodes"]:
            ip_batch(node["name"], node.get("ip", []))
            if node.get("nft"):
                argv = ["nsenter", f"--net=/run/netns/{node['name']}", "nft", "-f", "-"]
                proc = subprocess.run(argv, input=node["nft"], capture_output=True, text=True)
                if proc.returncode != 0:
                    raise RuntimeError(f"nft in node {node['name']}: {proc.stderr.strip()}")
    except (OSError, RuntimeError) as e:
        print(f"lab build failed: {e}", file=sys.stderr)
        return 1
    print(f"built {len(plan['nodes'])} nodes, {len(plan['links'])} links")
    return 0


if __name__ == "__main__":
    sys.exit(main())
