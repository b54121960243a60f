"""The Packer template and the Vagrant lab are valid for the tools Debian 12 ships
(packer 1.6.6, vagrant 2.3 with vagrant-libvirt); neither builds nor boots anything here."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from image_vm import REPO

pytestmark = pytest.mark.image


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} missing on this host: make image-deps"
    return path


def test_packer_template_validates() -> None:
    r = subprocess.run(
        [tool("packer"), "validate", "images/packer/appliance.pkr.hcl"], cwd=REPO, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_packer_template_uses_the_image_scripts() -> None:
    """One way to install: Packer runs the same scripts and package list as images/build.py."""
    hcl = (REPO / "images/packer/appliance.pkr.hcl").read_text()
    for script in ("scripts/install-appliance.sh", "scripts/configure-system.sh", "packages.txt"):
        assert script in hcl, script


def test_vagrantfile_validates(tmp_path: Path) -> None:
    env = dict(os.environ, VAGRANT_DEFAULT_PROVIDER="libvirt", VAGRANT_HOME=str(tmp_path / "vagrant.d"))
    r = subprocess.run([tool("vagrant"), "validate"], cwd=REPO, capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "validated successfully" in r.stdout


def test_vagrant_lab_has_hub_spokes_and_wan_router(tmp_path: Path) -> None:
    env = dict(os.environ, VAGRANT_DEFAULT_PROVIDER="libvirt", VAGRANT_HOME=str(tmp_path / "vagrant.d"))
    r = subprocess.run([tool("vagrant"), "status"], cwd=REPO, capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    machines = [line.split()[0] for line in r.stdout.splitlines() if "(libvirt)" in line]
    assert machines == ["wan", "hub", "spoke1", "spoke2"], r.stdout
