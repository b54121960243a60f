"""Preflight: is this box able to run the site? (`appliance check`, first step of plan and apply)

Each problem is one line saying what is missing and the command that installs it. Nothing here
changes the system: kernel modules are looked up (loaded, built in, or present on disk), not loaded.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .nft import MISSING_NFTABLES
from .packages import installed_versions, version_tuple
from .render.spec import DesiredState
from .render.timesync import TIMESYNCD_PATH

APT = "apt-get install --no-install-recommends"
MIN_FRR = (8, 4)
MIN_STRONGSWAN = (5, 9)
# module -> its Kconfig symbol (a built-in module has no file and often no /sys/module entry)
KERNEL_MODULES = {
    "ip_gre": "CONFIG_NET_IPGRE",
    "esp4": "CONFIG_INET_ESP",
    "xfrm_user": "CONFIG_XFRM_USER",
    "nf_tables": "CONFIG_NF_TABLES",
    "nfnetlink_log": "CONFIG_NETFILTER_NETLINK_LOG",
}
# Plugins that bring AES-GCM and the ECP groups (libstrongswan-standard-plugins; measured: without
# them charon offers neither and every IKE exchange fails without a clear error).
STRONGSWAN_PLUGINS = ("libstrongswan-openssl.so", "libstrongswan-gcm.so")
STRONGSWAN_PLUGIN_DIR = Path("/usr/lib/ipsec/plugins")


@dataclass(frozen=True)
class Problem:
    what: str
    fix: str

    def __str__(self) -> str:
        return f"{self.what} ({self.fix})"


def package_versions() -> Callable[[str], tuple[int, ...] | None]:
    """package -> its installed version as numbers (None: not installed), from one dpkg-query (packages.py)."""
    installed = installed_versions()
    return lambda package: version_tuple(installed[package]) if package in installed else None


def kernel_config(kernel: str) -> dict[str, str]:
    """The running kernel's Kconfig (/proc/config.gz or /boot/config-VERSION), {} when neither exists."""
    try:
        text = gzip.decompress(Path("/proc/config.gz").read_bytes()).decode()
    except OSError:
        try:
            text = Path(f"/boot/config-{kernel}").read_text()
        except OSError:
            return {}
    return dict(line.split("=", 1) for line in text.splitlines() if line.startswith("CONFIG_") and "=" in line)


class KernelModules:
    """Is a module loaded, built in, or installed as a loadable module for the running kernel?

    The Kconfig and the module indexes are read once, at the first module not loaded already."""

    def __init__(self, kernel: str | None = None, modules_root: Path = Path("/lib/modules")) -> None:
        self.kernel = kernel or os.uname().release
        self.modules_root = modules_root
        self._config: dict[str, str] | None = None
        self._indexed: set[str] | None = None

    def __call__(self, name: str) -> bool:
        if Path(f"/sys/module/{name}").exists():
            return True
        if self._config is None:
            self._config = kernel_config(self.kernel)
        if self._config.get(KERNEL_MODULES.get(name, "")) == "y":
            return True
        return name in self._index()

    def _index(self) -> set[str]:
        if self._indexed is None:
            self._indexed = set()
            for index in ("modules.builtin", "modules.dep"):
                try:
                    lines = (self.modules_root / self.kernel / index).read_text().splitlines()
                except FileNotFoundError:
                    continue
                for line in lines:
                    module = line.split(":", 1)[0].rsplit("/", 1)[-1].split(".ko", 1)[0]
                    self._indexed.add(module.replace("-", "_"))
        return self._indexed


def check(
    desired: DesiredState,
    *,
    version: Callable[[str], tuple[int, ...] | None] | None = None,
    which: Callable[[str], str | None] = shutil.which,
    has_module: Callable[[str], bool] | None = None,
    has_python_module: Callable[[str], bool] = lambda m: importlib.util.find_spec(m) is not None,
    plugin_dir: Path = STRONGSWAN_PLUGIN_DIR,
    charon_algorithms: Callable[[], list[str] | None] | None = None,
) -> list[Problem]:
    """Every reason this box cannot apply `desired`; empty when it can.

    `version` defaults to package_versions(), `has_module` to KernelModules()."""
    problems: list[Problem] = []
    version = version or package_versions()
    has_module = has_module or KernelModules()

    def need_package(pkg: str, what: str, minimum: tuple[int, ...] | None = None) -> bool:
        v = version(pkg)
        if v is None:
            problems.append(Problem(f"{what} is not installed", f"{APT} {pkg}"))
            return False
        if minimum is not None and v[: len(minimum)] < minimum:
            have, want = ".".join(map(str, v)), ".".join(map(str, minimum))
            problems.append(
                Problem(f"{pkg} {have} is too old (need >= {want})", f"{APT} {pkg} from Debian 12 or later")
            )
            return False
        return True

    if need_package("frr", "FRR", MIN_FRR):
        for daemon in sorted(desired.frr.daemons):
            if not Path(f"/usr/lib/frr/{daemon}").exists():
                problems.append(Problem(f"FRR has no {daemon}", f"{APT} --reinstall frr"))
    need_package("frr-pythontools", "frr-reload.py (FRR's reload tool)")
    need_package("strongswan-swanctl", "swanctl (strongSwan's VICI client)", MIN_STRONGSWAN)
    need_package("strongswan-charon", "charon (strongSwan's IKE daemon)", MIN_STRONGSWAN)
    missing_plugins = [p for p in STRONGSWAN_PLUGINS if not (plugin_dir / p).exists()]
    if missing_plugins:
        problems.append(
            Problem(
                f"strongSwan lacks {', '.join(missing_plugins)}: no AES-GCM or ECP, IKE would fail",
                f"{APT} libstrongswan-standard-plugins",
            )
        )
    if desired.vrrp.config is not None:
        need_package("keepalived", "keepalived (VRRP)")
    if any(f.path == TIMESYNCD_PATH for f in desired.files):
        need_package("systemd-timesyncd", "systemd-timesyncd (the site names NTP servers)")
    if which("nft") is None:
        problems.append(Problem("nft is not installed", f"{APT} nftables"))
    if not has_python_module("nftables"):
        problems.append(Problem("python-nftables is not importable", MISSING_NFTABLES.split("(", 1)[1].rstrip(")")))
    for mod in ("pyroute2", "vici"):
        if not has_python_module(mod):
            problems.append(Problem(f"python package {mod} is missing", f"pip install {mod}"))
    for mod in KERNEL_MODULES:
        if not has_module(mod):
            problems.append(Problem(f"kernel module {mod} is not available", f"{APT} linux-image-amd64 and reboot"))
    if charon_algorithms is not None and not missing_plugins:
        missing = charon_algorithms()
        if missing:
            problems.append(
                Problem(
                    f"charon does not offer {', '.join(missing)} (asked by ipsec proposals)",
                    f"{APT} libstrongswan-standard-plugins and restart strongswan",
                )
            )
    return problems
