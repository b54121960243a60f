"""Golden files: every artefact of every example, exactly as `appliance render --root-dir` writes it.

tests/golden/<example>/ holds
- manifest.json: every RenderedFile's path, mode, owner, group and whether it holds a secret;
- root/<path>: each file's exact content;
- specs.json: what is not a file (netlink links/addresses/routes, VICI load_conn dicts, shared
  secrets and credentials, the nftables batch, sysctl keys, FRR daemons, role, hostname).

A renderer change shows up as a failing diff here. When the change is intended, rewrite them with
`.venv/bin/python -m pytest tests/unit/test_render_golden.py --update-golden` and review
`git diff tests/golden` like code. Nothing is ever rewritten without that flag.
"""

from __future__ import annotations

import difflib
import grp
import json
import os
import pwd
import shutil
import warnings
from pathlib import Path
from typing import Any

import pytest
from example_sites import EXAMPLES, FAKE_SECRETS, ROOT, example_id, load_example

from appliance.cli import main
from appliance.desired_json import to_data
from appliance.render import render_site
from appliance.render.spec import DesiredState

GOLDEN = ROOT / "tests" / "golden"
UPDATE_HINT = (
    "if the change is intended: .venv/bin/python -m pytest tests/unit/test_render_golden.py --update-golden, "
    "then review `git diff tests/golden`"
)


def manifest_of(desired: DesiredState) -> list[dict[str, Any]]:
    return [
        {"path": f.path, "mode": f"{f.mode:04o}", "owner": f.owner, "group": f.group, "secret": f.secret}
        for f in desired.files
    ]


def specs_of(desired: DesiredState) -> dict[str, Any]:
    """Everything a driver receives that is not already a file (frr.conf/keepalived.conf are files)."""
    data = to_data(desired)
    return {
        "hostname": data["hostname"],
        "role": data["role"],
        "sysctl": data["sysctl"],
        "netlink": data["netlink"],
        "ipsec": data["ipsec"],
        "firewall": data["firewall"],
        "frr_daemons": data["frr"]["daemons"],
        "vrrp": data["vrrp"]["config"] is not None,
        "secrets": data["secrets"],
    }


def dump_json(value: Any) -> str:
    return json.dumps(value, indent=2) + "\n"


def render_with_cli(example: Path, root: Path, capsys: pytest.CaptureFixture[str]) -> list[str]:
    """`appliance render EXAMPLE --root-dir ROOT`; returns the paths it printed (relative to ROOT)."""
    assert main(["render", str(example), "--root-dir", str(root)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    return [str(Path(line).relative_to(root)) for line in out.splitlines()]


def tree(root: Path) -> dict[str, Path]:
    return {str(p.relative_to(root)): p for p in sorted(root.rglob("*")) if p.is_file()}


def diff(name: str, expected: str, actual: str) -> str:
    lines = difflib.unified_diff(
        expected.splitlines(keepends=True), actual.splitlines(keepends=True), f"golden/{name}", f"rendered/{name}"
    )
    return "".join(lines)


@pytest.fixture
def fake_secrets_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name, value in FAKE_SECRETS.items():
        monkeypatch.setenv(name, value)
    # The host's own /etc/appliance/secrets.env must not leak into golden files.
    monkeypatch.setenv("APPLIANCE_SECRETS_ENV", str(tmp_path / "no-secrets.env"))


def write_golden(golden: Path, desired: DesiredState, root: Path) -> list[str]:
    """Replace the example's golden directory; return what changed (for the warning)."""
    old = {name: p.read_bytes() for name, p in tree(golden).items()} if golden.exists() else {}
    shutil.rmtree(golden, ignore_errors=True)
    (golden / "root").mkdir(parents=True)
    for name, p in tree(root).items():
        target = golden / "root" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(p.read_bytes())
    (golden / "manifest.json").write_text(dump_json(manifest_of(desired)))
    (golden / "specs.json").write_text(dump_json(specs_of(desired)))
    new = {name: p.read_bytes() for name, p in tree(golden).items()}
    return sorted(name for name in old.keys() | new.keys() if old.get(name) != new.get(name))


@pytest.mark.parametrize("example", EXAMPLES, ids=example_id)
def test_rendered_artefacts_match_golden_files(
    example: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    fake_secrets_env: None,
    update_golden: bool,
) -> None:
    root = tmp_path / "root"
    printed = render_with_cli(example, root, capsys)
    desired = render_site(load_example(example).site)
    golden = GOLDEN / example_id(example)

    # The CLI wrote exactly the RenderedFiles (no stray temp files), each where it lives on a box.
    expected_paths = [f.path.lstrip("/") for f in desired.files]
    assert printed == expected_paths
    assert sorted(tree(root)) == sorted(expected_paths)
    for f in desired.files:
        st = (root / f.path.lstrip("/")).stat()
        assert f"{st.st_mode & 0o7777:04o}" == f"{f.mode:04o}", f.path
        if os.geteuid() == 0:  # only root can give files away; owners that do not exist are left out
            assert pwd.getpwuid(st.st_uid).pw_name == (f.owner if _user_exists(f.owner) else "root"), f.path
            assert grp.getgrgid(st.st_gid).gr_name == (f.group if _group_exists(f.group) else "root"), f.path

    if update_golden:
        changed = write_golden(golden, desired, root)
        if changed:
            warnings.warn(f"golden files rewritten for {example_id(example)}: {', '.join(changed)}", stacklevel=1)
        return

    if not (golden / "manifest.json").exists():
        pytest.fail(
            f"no golden files for {example_id(example)} (expected {golden.relative_to(ROOT)}/); create them with "
            ".venv/bin/python -m pytest tests/unit/test_render_golden.py --update-golden and review them"
        )
    problems = []
    expected_files = {name.removeprefix("root/"): p for name, p in tree(golden).items() if name.startswith("root/")}
    if sorted(expected_files) != sorted(expected_paths):
        problems.append(f"file set differs: golden {sorted(expected_files)}, rendered {sorted(expected_paths)}")
    for name in sorted(set(expected_files) & set(expected_paths)):
        expected, actual = expected_files[name].read_text(), (root / name).read_text()
        if expected != actual:
            problems.append(diff(name, expected, actual))
    for name, actual in (("manifest.json", manifest_of(desired)), ("specs.json", specs_of(desired))):
        expected_text = (golden / name).read_text()
        if expected_text != dump_json(actual):
            problems.append(diff(name, expected_text, dump_json(actual)))
    assert not problems, "\n".join(problems) + "\n" + UPDATE_HINT


def test_no_golden_directory_without_its_example() -> None:
    """A removed or renamed example must take its golden files with it."""
    ids = {example_id(p) for p in EXAMPLES}
    golden_ids = {m.parent.relative_to(GOLDEN).as_posix() for m in GOLDEN.rglob("manifest.json")}
    stale = sorted(golden_ids - ids)
    assert stale == [], f"golden files for examples that no longer exist: {stale} (git rm -r them)"


def test_golden_files_hold_only_fake_secrets() -> None:
    """The goldens are committed: the secrets in them must be the tests' obvious fakes."""
    specs = [json.loads(m.read_text()) for m in GOLDEN.rglob("specs.json")]
    assert specs, "no golden files yet"
    for s in specs:
        assert set(s["secrets"]) <= set(FAKE_SECRETS.values())


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True
