"""Prints how long the appliance image takes to build (or to find in the cache) and to boot in QEMU
(TCG) with examples/hub.yaml on a config drive, up to an SSH login and to appliance.service's end.

    .venv/bin/python bench/image_boot.py [--force]      (root; --force rebuilds every stage)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "image"))
from image_vm import BUILD, REPO, ApplianceVm, build, make_config_drive, make_key  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--force", action="store_true", help="rebuild every stage instead of using the cache")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.force:
            for stage in ("base", "wheels", "image"):
                subprocess.run(["/usr/bin/python3", str(BUILD), "--force", stage], check=True, capture_output=True)
        started = time.monotonic()
        cache = build("image", work / "build.log")
        print(f"build:               {time.monotonic() - started:6.1f} s")
        key = make_key(work)
        vm = ApplianceVm(work, key, name="hub")
        vm.add_overlay(cache / "appliance.qcow2")
        vm.add_config_drive(make_config_drive(work, REPO / "examples/hub.yaml", key))
        vm.start()
        try:
            print(f"boot to SSH login:   {vm.wait_for_ssh(600):6.1f} s")
            vm.ssh("timeout 300 systemctl is-system-running --wait", timeout=330)
            result = vm.ssh("systemctl show -p Result --value appliance.service").stdout.strip()
            print(f"boot finished:       {time.monotonic() - vm.started:6.1f} s (appliance.service: {result})")
        finally:
            vm.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
