"""Installed package versions: one dpkg-query for all, cached until dpkg's database changes."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from appliance import packages, preflight
from appliance.model import inputs


@pytest.fixture
def db(tmp_path: Path) -> Path:
    (tmp_path / "dpkg" / "updates").mkdir(parents=True)
    (tmp_path / "dpkg" / "status").write_text("Package: frr\n")
    return tmp_path / "dpkg"


@pytest.fixture
def queries(monkeypatch) -> list[tuple[str, ...]]:
    asked: list[tuple[str, ...]] = []
    answer = {"frr": "8.4.4-1.1~deb12u2", "keepalived": "1:2.2.7-1+b2"}

    def query(pkgs):
        asked.append(pkgs)
        return {p: v for p, v in answer.items() if p in pkgs}

    monkeypatch.setattr(packages, "query", query)
    return asked


def test_dpkg_query_lists_installed_packages_and_omits_unknown_ones() -> None:
    if shutil.which("dpkg-query") is None:
        pytest.fail("the unit tests run on Debian: dpkg-query is missing")
    found = packages.query(("dpkg", "appliance-no-such-package"))
    assert list(found) == ["dpkg"]
    assert packages.version_tuple(found["dpkg"]) >= (1, 21)


def test_versions_are_numbers_without_epoch_or_debian_revision() -> None:
    assert packages.version_tuple("1:2.2.7-1+b2") == (2, 2, 7)
    assert packages.version_tuple("8.4.4-1.1~deb12u2", 2) == (8, 4)
    assert packages.version_tuple("") == ()


def test_one_query_then_the_cache_until_dpkg_changes(db: Path, tmp_path: Path, queries) -> None:
    cache = tmp_path / "run" / "packages.json"
    first = packages.installed_versions(("frr", "keepalived", "frr-pythontools"), db=db, cache=cache)
    assert first == {"frr": "8.4.4-1.1~deb12u2", "keepalived": "1:2.2.7-1+b2"}
    assert len(queries) == 1
    assert packages.installed_versions(("frr", "keepalived", "frr-pythontools"), db=db, cache=cache) == first
    assert len(queries) == 1  # answered from the cache

    # dpkg rewrites status by rename on every install/remove: a new file is a miss
    (db / "status.new").write_text("Package: frr\nPackage: keepalived\n")
    os.replace(db / "status.new", db / "status")
    packages.installed_versions(("frr", "keepalived", "frr-pythontools"), db=db, cache=cache)
    assert len(queries) == 2
    # an unfinished dpkg run leaves journal files in updates/
    (db / "updates" / "0000").write_text("Package: frr\n")
    packages.installed_versions(("frr", "keepalived", "frr-pythontools"), db=db, cache=cache)
    assert len(queries) == 3
    # other packages asked: a miss
    packages.installed_versions(("frr",), db=db, cache=cache)
    assert len(queries) == 4


def test_a_damaged_cache_is_asked_again_and_rewritten(db: Path, tmp_path: Path, queries) -> None:
    cache = tmp_path / "packages.json"
    cache.write_text("{not json")
    assert packages.installed_versions(("frr",), db=db, cache=cache) == {"frr": "8.4.4-1.1~deb12u2"}
    assert json.loads(cache.read_text())["versions"] == {"frr": "8.4.4-1.1~deb12u2"}
    cache.write_text(json.dumps({**json.loads(cache.read_text()), "versions": None}))
    assert packages.installed_versions(("frr",), db=db, cache=cache) == {"frr": "8.4.4-1.1~deb12u2"}
    assert len(queries) == 2


def test_without_a_dpkg_database_nothing_is_cached(tmp_path: Path, queries) -> None:
    cache = tmp_path / "packages.json"
    packages.installed_versions(("frr",), db=tmp_path / "nodpkg", cache=cache)
    packages.installed_versions(("frr",), db=tmp_path / "nodpkg", cache=cache)
    assert len(queries) == 2 and not cache.exists()


def test_preflight_and_the_site_loader_share_one_query(monkeypatch) -> None:
    asked = []

    def installed(*args, **kwargs):
        asked.append(args)
        return {"frr": "10.2.1-1", "frr-pythontools": "10.2.1-1"}

    monkeypatch.setattr(inputs, "installed_versions", installed)
    monkeypatch.setattr(preflight, "installed_versions", installed)
    assert inputs.installed_frr_version() == (10, 2)
    version = preflight.package_versions()
    assert (version("frr"), version("keepalived")) == ((10, 2, 1), None)
    assert asked == [(), ()]
