"""`appliance lab`: a VM with the real data plane, where site files are tried before production.

The host kernel this project is built on has no GRE, ESP, dummy or VRF, so the lab boots Debian's
cloud kernel under QEMU (kernel.py, vm.py) with the host's own root shared read-only, and turns a
containerlab-like topology file (topology.py) into network namespaces inside it (build.py). A
detached daemon per lab (daemon.py) owns QEMU and virtiofsd and relays commands to an agent in the
guest (guest/agent.py); `up`, `exec`, `status`, `down` (lab.py, cli.py) are its clients.
"""


class LabError(Exception):
    """A lab operation failed; str() is one line naming what failed and how to fix it."""
