"""python-nftables: one loader, and one clear line when Debian's python3-nftables is missing."""

from __future__ import annotations

import sys

import pytest

from appliance import status
from appliance.nft import MISSING_NFTABLES, NftablesMissing, load_nftables


def test_load_nftables_gives_a_json_handle() -> None:
    nft = load_nftables()  # the venv is built with --system-site-packages: Debian's module is there
    assert nft.get_json_output()  # a flag bit (libnftables returns its output flags), not a bool


def test_missing_module_names_the_package_and_the_venv_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "nftables", None)  # makes `import nftables` raise ImportError
    with pytest.raises(NftablesMissing) as exc:
        load_nftables()
    assert str(exc.value) == MISSING_NFTABLES
    assert "\n" not in str(exc.value)
    assert "apt-get install python3-nftables" in str(exc.value)
    assert "--system-site-packages" in str(exc.value)


def test_show_firewall_reports_the_missing_module_as_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "nftables", None)
    with pytest.raises(status.StatusError) as exc:
        status.firewall()
    assert str(exc.value) == MISSING_NFTABLES
