"""Preflight: one line per missing piece, with the command that installs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from appliance import preflight
from appliance.model.validate import load_site
from appliance.render import render_site

ROOT = Path(__file__).resolve().parents[2]
ENV = {"DMVPN_PSK": "preflight-test-psk-0123456789", "OSPF_KEY": "md5-key"}
VERSIONS = {
    "frr": (8, 4, 4),
    "frr-pythontools": (8, 4, 4),
    "strongswan-swanctl": (5, 9, 8),
    "strongswan-charon": (5, 9, 8),
    "keepalived": (2, 2, 7),
}


def desired():
    return render_site(load_site(ROOT / "examples/hub.yaml", env=ENV, frr_version=(8, 4)).site)


def plugin_dir(tmp_path: Path, *names: str) -> Path:
    for n in names:
        (tmp_path / n).touch()
    return tmp_path


def run_check(tmp_path, versions=VERSIONS, plugins=preflight.STRONGSWAN_PLUGINS, modules=None, **kw):
    return [
        str(p)
        for p in preflight.check(
            desired(),
            version=versions.get,
            which=lambda name: f"/usr/sbin/{name}",
            has_module=(lambda m: True) if modules is None else modules.__contains__,
            has_python_module=lambda m: True,
            plugin_dir=plugin_dir(tmp_path, *plugins),
            **kw,
        )
    ]


def test_a_complete_box_passes(tmp_path: Path) -> None:
    assert run_check(tmp_path) == []


def test_missing_standard_plugins_are_named_with_the_package(tmp_path: Path) -> None:
    assert run_check(tmp_path, plugins=("libstrongswan-openssl.so",)) == [
        "strongSwan lacks libstrongswan-gcm.so: no AES-GCM or ECP, IKE would fail "
        "(apt-get install --no-install-recommends libstrongswan-standard-plugins)"
    ]


def test_missing_and_old_packages(tmp_path: Path) -> None:
    versions = {**VERSIONS, "frr": (7, 5, 1)}
    del versions["frr-pythontools"]
    assert run_check(tmp_path, versions=versions) == [
        "frr 7.5.1 is too old (need >= 8.4) (apt-get install --no-install-recommends frr from Debian 12 or later)",
        "frr-reload.py (FRR's reload tool) is not installed (apt-get install --no-install-recommends frr-pythontools)",
    ]


def test_missing_kernel_modules(tmp_path: Path) -> None:
    problems = run_check(tmp_path, modules={"xfrm_user", "nf_tables", "nfnetlink_log"})
    assert problems == [
        "kernel module ip_gre is not available (apt-get install --no-install-recommends linux-image-amd64 and reboot)",
        "kernel module esp4 is not available (apt-get install --no-install-recommends linux-image-amd64 and reboot)",
    ]


def test_charon_without_the_sites_algorithms(tmp_path: Path) -> None:
    problems = run_check(tmp_path, charon_algorithms=lambda: ["AES_GCM_16_256", "ECP_384"])
    assert problems == [
        "charon does not offer AES_GCM_16_256, ECP_384 (asked by ipsec proposals) "
        "(apt-get install --no-install-recommends libstrongswan-standard-plugins and restart strongswan)"
    ]


def test_module_lookup_reads_modules_dep(tmp_path: Path) -> None:
    kdir = tmp_path / "6.1.0-test"
    kdir.mkdir()
    (kdir / "modules.dep").write_text("kernel/net/ipv4/ip_gre.ko.xz: kernel/net/ipv4/gre.ko.xz\n")
    (kdir / "modules.builtin").write_text("kernel/net/xfrm/xfrm_user.ko\n")
    modules = preflight.KernelModules("6.1.0-test", tmp_path)
    assert modules("ip_gre")
    assert modules("xfrm_user")
    assert not modules("esp4")


def test_check_command_on_this_host_names_what_is_missing_and_changes_nothing() -> None:
    """This host's kernel has no GRE and no ESP (measured): `appliance check` must say so, exit 3."""
    r = subprocess.run(
        [sys.executable, "-m", "appliance.cli", "check", "examples/hub.yaml"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **ENV, "APPLIANCE_SECRETS_ENV": "/nonexistent"},
        timeout=60,
    )
    has_gre = preflight.KernelModules()("ip_gre")
    if has_gre:
        assert r.returncode == 0, r.stderr
        return
    assert r.returncode == 3
    assert "preflight: kernel module ip_gre is not available" in r.stderr
    assert r.stderr.rstrip().endswith("nothing was changed")
