"""The image build's inputs and cache keys, without building anything (no root, no VM)."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest
from image_vm import MAKE_CONFIG_DRIVE, REPO


def load_build_module():
    spec = importlib.util.spec_from_file_location("image_build", REPO / "images/build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def install_deps_group(group: str) -> list[str]:
    script = f'source <(sed -n "/^{group}=(/,/^)/p" scripts/install-deps.sh); printf "%s\\n" "${{{group}[@]}}"'
    out = subprocess.run(["bash", "-c", script], cwd=REPO, check=True, capture_output=True, text=True).stdout
    return out.split()


def test_image_has_every_product_package() -> None:
    build = load_build_module()
    image = set(build.package_list("cloud"))
    product = install_deps_group("PRODUCT")
    assert len(product) > 10
    assert not set(product) - image, "images/packages.txt lacks product packages of scripts/install-deps.sh"
    # Named explicitly or charon has no AES-GCM/ECP with --no-install-recommends.
    assert {"libstrongswan-standard-plugins", "charon-systemd", "netbase"} <= image
    assert build.package_list("generic")[0] == "linux-image-amd64"


@pytest.fixture
def build_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The build module pointed at a copy of images/ that the test may edit."""
    build = load_build_module()
    images = tmp_path / "images"
    shutil.copytree(REPO / "images", images, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(build, "IMAGES", images)
    return build, build.Build(tmp_path / "cache", "cloud", force=False), images


def test_cache_keys_are_stable(build_copy) -> None:
    build, b, _ = build_copy
    again = build.Build(Path("/nonexistent"), "cloud", force=False)
    assert (b.base_key(), b.wheels_key(), b.image_key()) == (again.base_key(), again.wheels_key(), again.image_key())


def test_package_list_change_rebuilds_everything(build_copy) -> None:
    _, b, images = build_copy
    base, image = b.base_key(), b.image_key()
    with (images / "packages.txt").open("a") as f:
        f.write("mtr-tiny\n")
    assert b.base_key() != base and b.image_key() != image


def test_script_change_rebuilds_image_not_base(build_copy) -> None:
    _, b, images = build_copy
    base, wheels, image = b.base_key(), b.wheels_key(), b.image_key()
    with (images / "scripts/configure-system.sh").open("a") as f:
        f.write("# changed\n")
    assert (b.base_key(), b.wheels_key()) == (base, wheels)
    assert b.image_key() != image


def test_kernel_choice_is_part_of_the_key(build_copy) -> None:
    build, b, _ = build_copy
    assert build.Build(b.cache, "generic", force=False).base_key() != b.base_key()


def test_missing_tool_fails_naming_its_package(build_copy, monkeypatch: pytest.MonkeyPatch) -> None:
    build, _, _ = build_copy
    real_which = shutil.which
    monkeypatch.setattr(build.shutil, "which", lambda t: None if t == "mmdebstrap" else real_which(t))
    with pytest.raises(build.BuildError, match=r"mmdebstrap \(package mmdebstrap\).*make image-deps"):
        build.check_tools("base")


@pytest.mark.image  # needs dosfstools and mtools (make image-deps)
def test_config_drive_carries_site_secrets_keys(tmp_path: Path) -> None:
    site, secrets, keys = tmp_path / "s.yaml", tmp_path / "s.env", tmp_path / "keys"
    site.write_text("system: {hostname: x}\n")
    secrets.write_text("DMVPN_PSK=not-in-output-0123456789\n")
    keys.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTheTestOnly test\n")
    out = tmp_path / "drive.img"
    r = subprocess.run([str(MAKE_CONFIG_DRIVE), str(site), str(secrets), str(keys), str(out)], capture_output=True)
    assert r.returncode == 0, r.stderr
    assert b"not-in-output" not in r.stdout + r.stderr
    assert out.stat().st_mode & 0o777 == 0o600
    label = subprocess.run(["blkid", "-o", "value", "-s", "LABEL", str(out)], capture_output=True, text=True)
    assert label.stdout.strip() == "APPLIANCE"
    listing = subprocess.run(["mdir", "-b", "-i", str(out), "::/"], capture_output=True, text=True).stdout
    assert sorted(Path(p).name for p in listing.split()) == ["authorized_keys", "secrets.env", "site.yaml"]
    copied = subprocess.run(["mtype", "-i", str(out), "::/secrets.env"], capture_output=True, text=True).stdout
    assert copied == secrets.read_text()


@pytest.mark.image
def test_config_drive_refuses_a_key_file_without_keys(tmp_path: Path) -> None:
    site, keys = tmp_path / "s.yaml", tmp_path / "keys"
    site.write_text("x: 1\n")
    keys.write_text("not a key\n")
    r = subprocess.run(
        [str(MAKE_CONFIG_DRIVE), str(site), "-", str(keys), str(tmp_path / "d.img")], capture_output=True, text=True
    )
    assert r.returncode == 1
    assert r.stderr.strip() == f"make-config-drive: {keys}: no SSH public key in it"
