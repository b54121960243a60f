"""An apply or plan whose inputs are unchanged reuses the last generation's DesiredState (reuse.py):
no load, no validation, no rendering. Any changed input, or changed code, loads and renders again;
the drivers diff the running state either way."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from example_sites import EXAMPLES, FAKE_SECRETS, example_id
from fakes import FakeDriver

import appliance.render
from appliance import engine_cli, reuse
from appliance.cli import build_parser
from appliance.desired_json import to_data
from appliance.generations import StateDir
from appliance.model import inputs, validate

HUB = Path(__file__).resolve().parents[2] / "examples" / "hub.yaml"
PSK_FILE = "    psk: {file: psk.txt}\n"
X509 = "    x509: {ca: ca.pem, cert: cert.pem, key: key.pem}\n"


class SeesNoDifference:
    """A driver for every rendered file whose running state already matches: a no-op plan."""

    name = "everything"

    def claims(self, desired) -> set[str]:
        return {f.path for f in desired.files}

    def diff(self, desired) -> list:
        return []


class Box:
    """A site directory and a state directory; drivers set per test, no preflight (it reads the host)."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.dir, self.state_dir = tmp_path / "site", tmp_path / "state"
        self.dir.mkdir(parents=True)
        self.site = self.dir / "site.yaml"
        self.site.write_text(HUB.read_text())
        self.secrets_env = tmp_path / "secrets.env"
        self.monkeypatch = monkeypatch
        monkeypatch.setenv("APPLIANCE_SECRETS_ENV", str(self.secrets_env))
        for name, value in FAKE_SECRETS.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setattr(inputs, "installed_frr_version", lambda: (8, 4))
        monkeypatch.setattr(engine_cli, "box_preflight", lambda desired: None)
        self.drivers: list = [SeesNoDifference()]
        monkeypatch.setattr(engine_cli, "make_drivers", lambda ctx: self.drivers)

    @property
    def state(self) -> StateDir:
        return StateDir(self.state_dir)

    def run(self, command: str, site: Path | None = None) -> int:
        argv = [command, "--state-dir", str(self.state_dir), str(site or self.site)]
        args = build_parser(argv).parse_args(argv)
        return args.func(args)

    def edit(self, old: str, new: str) -> None:
        text = self.site.read_text()
        assert old in text
        self.site.write_text(text.replace(old, new, 1))

    def write_private(self, name: str, content: str) -> Path:
        path = self.dir / name
        path.write_text(content)
        path.chmod(0o600)
        return path

    def load(self):
        return engine_cli.load_desired(self.site, self.state)


@pytest.fixture
def box(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Box:
    return Box(tmp_path, monkeypatch)


@pytest.fixture
def renders(monkeypatch: pytest.MonkeyPatch) -> list:
    """Every call of render_site (engine_cli imports it when it loads a site)."""
    calls, real = [], appliance.render.render_site

    def counting(site):
        calls.append(site)
        return real(site)

    monkeypatch.setattr(appliance.render, "render_site", counting)
    return calls


def full_render(box: Box):
    return appliance.render.render_site(validate.load_site(box.site).site)


def refuse_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("loaded or rendered although no input changed")

    monkeypatch.setattr(validate, "load_site", refuse)
    monkeypatch.setattr(appliance.render, "render_site", refuse)


def test_unchanged_inputs_reuse_the_last_desired_state_without_loading_or_rendering(box, monkeypatch, capsys):
    assert box.run("apply") == 0
    record = box.state.current().path / "inputs.json"
    written = record.stat()
    expected = full_render(box)
    refuse_loading(monkeypatch)
    assert box.load().desired == expected
    assert box.run("apply") == 0
    assert box.run("plan") == 0
    assert capsys.readouterr().out.splitlines()[-2:] == ["no changes", "no changes"]
    assert (record.stat().st_ino, record.stat().st_mtime_ns) == (written.st_ino, written.st_mtime_ns)  # not rewritten


@pytest.mark.parametrize("example", EXAMPLES, ids=example_id)
def test_a_reused_desired_state_equals_a_full_render_to_the_order_of_its_keys(box, monkeypatch, example):
    box.site.write_text(example.read_text())
    assert box.run("apply") == 0
    expected = full_render(box)
    refuse_loading(monkeypatch)
    reused = box.load().desired
    assert reused == expected
    # the drivers send VICI and nftables messages built from these dicts in their key order
    assert json.dumps(to_data(reused)) == json.dumps(to_data(expected))


def _site_byte(box: Box) -> None:
    box.edit("hello_interval: 2", "hello_interval: 3")


def _comment(box: Box) -> None:
    box.edit("# DMVPN hub", "# The DMVPN hub")


def _env_secret(box: Box) -> None:
    box.monkeypatch.setenv("OSPF_KEY", "another-md5-key")


def _secrets_env_value(box: Box) -> None:
    box.monkeypatch.delenv("OSPF_KEY")
    box.secrets_env.write_text("OSPF_KEY=from-secrets-env\n")
    box.secrets_env.chmod(0o600)


def _secret_file(box: Box) -> None:
    box.write_private("psk.txt", "another-psk-from-the-file-0123456789\n")


def _certificate(box: Box) -> None:
    box.write_private("cert.pem", "-----BEGIN CERTIFICATE-----\nanother\n-----END CERTIFICATE-----\n")


def _code(box: Box) -> None:
    box.monkeypatch.setattr(reuse, "code_digest", lambda: "the digest of an upgraded appliance")


def _frr_version(box: Box) -> None:
    box.monkeypatch.setattr(inputs, "installed_frr_version", lambda: (10, 2))


def _other_site_path(box: Box) -> None:
    shutil.copy(box.site, box.dir / "copy.yaml")
    box.site = box.dir / "copy.yaml"


@pytest.mark.parametrize(
    "change",
    [
        _site_byte,
        _comment,
        _env_secret,
        _secrets_env_value,
        _secret_file,
        _certificate,
        _code,
        _frr_version,
        _other_site_path,
    ],
    ids=lambda f: f.__name__.strip("_"),
)
def test_any_changed_input_loads_and_renders_again(box, renders, change):
    box.write_private("psk.txt", "the-psk-from-the-file-0123456789\n")
    for name in ("ca.pem", "cert.pem", "key.pem"):
        box.write_private(name, f"-----BEGIN {name}-----\n")
    if change is _certificate:
        box.edit("    psk: {env: DMVPN_PSK}\n", X509)
    else:
        box.edit("    psk: {env: DMVPN_PSK}\n", PSK_FILE)
    assert box.run("apply") == 0
    box.load()
    assert len(renders) == 1  # the apply's own load; the second one reused it
    change(box)
    loaded = box.load()
    assert len(renders) == 2
    assert loaded.desired == full_render(box)


def test_loading_and_rendering_run_only_code_the_digest_covers() -> None:
    code = (
        "import sys; from pathlib import Path; from appliance.model.validate import load_site;"
        "from appliance.render import render_site; from appliance.desired_json import from_data, to_data;"
        f"[from_data(to_data(render_site(load_site(Path(p)).site))) for p in {[str(p) for p in EXAMPLES]!r}];"
        "print(' '.join(m.__file__ for n, m in sys.modules.items() if n.startswith('appliance.')))"
    )
    env = {**os.environ, **FAKE_SECRETS}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    ran = {Path(f).resolve() for f in r.stdout.split()}
    covered = {p.resolve() for top in reuse.RENDERING_CODE for p in reuse._files_under(reuse.PACKAGE_DIR / top)}
    assert len(ran) > 10
    assert ran - covered == set()  # the package's __init__ (its version) is fed on its own


def test_the_code_digest_covers_every_file_of_the_rendering_code_but_not_its_bytecode(tmp_path, monkeypatch):
    package = tmp_path / "appliance"
    shutil.copytree(reuse.PACKAGE_DIR, package, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(reuse, "PACKAGE_DIR", package)
    digest = reuse.code_digest.__wrapped__
    before = digest()
    (package / "render" / "__pycache__").mkdir(exist_ok=True)
    (package / "render" / "__pycache__" / "frr.cpython-311.pyc").write_bytes(b"bytecode")
    assert digest() == before
    template = package / "render" / "templates" / "daemons.j2"
    template.write_text(template.read_text() + "\n")
    assert digest() != before


def test_after_a_change_that_changes_nothing_on_the_box_the_next_apply_reuses(box, renders):
    assert box.run("apply") == 0
    _comment(box)
    assert box.run("apply") == 0  # loaded (a new input), nothing to change: no new generation
    assert [g.number for g in box.state.generations()] == [1] and len(renders) == 2
    assert box.run("apply") == 0
    assert len(renders) == 2


def test_an_older_appliances_generation_is_reused_after_one_apply_in_the_renderers_key_order(box, renders, monkeypatch):
    assert box.run("apply") == 0
    generation = box.state.current().path
    (generation / "inputs.json").unlink()  # as recorded by an appliance before this one: sorted keys
    desired = generation / "desired.json"
    desired.write_text(json.dumps(json.loads(desired.read_text()), indent=1, sort_keys=True) + "\n")
    assert box.run("apply") == 0  # loads: no record
    assert len(renders) == 2 and [g.number for g in box.state.generations()] == [1]
    expected = full_render(box)
    refuse_loading(monkeypatch)
    reused = box.load().desired
    assert json.dumps(to_data(reused)) == json.dumps(to_data(expected))


def test_a_reused_state_still_repairs_drift(box, renders, capsys):
    assert box.run("apply") == 0
    calls: list = []
    box.drivers = [SeesNoDifference(), FakeDriver("netlink", calls)]  # its running state differs
    assert box.run("apply") == 0
    assert len(renders) == 1
    assert ("apply", "netlink") in calls
    assert "applied 1 change; generation 2" in capsys.readouterr().out
    assert box.state.current().inputs() == box.state.get(1).inputs()  # the same inputs, so reused next time
    box.drivers = [SeesNoDifference()]
    assert box.run("apply") == 0
    assert len(renders) == 1


def test_the_machine_key_is_0600_and_no_record_holds_a_secret(box, tmp_path, monkeypatch):
    assert box.run("apply") == 0
    key_file = box.state_dir / "inputs.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600 and len(key_file.read_bytes()) == 32
    record_file = box.state.current().path / "inputs.json"
    assert stat.S_IMODE(record_file.stat().st_mode) == 0o600
    text = record_file.read_text()
    record = json.loads(text)
    assert sorted(record["env"]) == ["DMVPN_PSK", "OSPF_KEY"]
    for value in FAKE_SECRETS.values():
        assert value not in text
    # keyed by the machine: the same inputs under another state directory give another HMAC
    other = Box(tmp_path / "other", monkeypatch)
    other.site = box.site
    assert other.run("apply") == 0
    assert json.loads((other.state.current().path / "inputs.json").read_text())["hmac"] != record["hmac"]


def _corrupt_desired(state: StateDir) -> None:
    (state.current().path / "desired.json").write_text('{"hostname": "hub"')


def _missing_desired(state: StateDir) -> None:
    (state.current().path / "desired.json").unlink()


def _desired_of_another_shape(state: StateDir) -> None:
    (state.current().path / "desired.json").write_text('{"hostname": "hub", "no such field": 1}')


def _corrupt_record(state: StateDir) -> None:
    (state.current().path / "inputs.json").write_text('{"site": ')


def _record_missing_a_field(state: StateDir) -> None:
    path = state.current().path / "inputs.json"
    record = json.loads(path.read_text())
    del record["hmac"]
    path.write_text(json.dumps(record))


def _missing_key(state: StateDir) -> None:
    (state.root / "inputs.key").unlink()


def _truncated_key(state: StateDir) -> None:
    (state.root / "inputs.key").write_bytes(b"short")


@pytest.mark.parametrize(
    "damage",
    [
        _corrupt_desired,
        _missing_desired,
        _desired_of_another_shape,
        _corrupt_record,
        _record_missing_a_field,
        _missing_key,
        _truncated_key,
    ],
    ids=lambda f: f.__name__.strip("_"),
)
def test_damaged_state_loads_and_renders_the_site_again(box, renders, damage):
    assert box.run("apply") == 0
    damage(box.state)
    loaded = box.load()
    assert len(renders) == 2
    assert loaded.desired == full_render(box)
    assert box.run("apply") == 0


def test_warnings_are_printed_whether_the_site_is_loaded_or_reused(box, renders, monkeypatch, capsys):
    monkeypatch.setenv("DMVPN_PSK", "short-psk")
    assert box.run("apply") == 0
    loaded_warnings = capsys.readouterr().err
    assert "warning: ipsec.auth.psk: the PSK has 9 characters" in loaded_warnings
    assert box.run("apply") == 0
    assert len(renders) == 1
    assert capsys.readouterr().err == loaded_warnings


def test_a_secret_file_made_world_readable_is_refused_as_by_a_full_load(box, renders, capsys):
    box.write_private("psk.txt", "the-psk-from-the-file-0123456789\n").chmod(0o644)
    box.edit("    psk: {env: DMVPN_PSK}\n", PSK_FILE)
    assert box.run("apply") == 2
    refused = capsys.readouterr().err
    (box.dir / "psk.txt").chmod(0o600)
    assert box.run("apply") == 0
    (box.dir / "psk.txt").chmod(0o644)
    assert box.run("apply") == 2
    assert capsys.readouterr().err.splitlines()[-1] == refused.splitlines()[-1]
    assert "is world-readable; chmod 600 it" in refused


def test_a_world_readable_secrets_env_is_refused_before_anything_is_reused(box):
    assert box.run("apply") == 0
    box.secrets_env.write_text("UNRELATED=1\n")
    os.chmod(box.secrets_env, 0o644)
    assert box.run("apply") == 2
