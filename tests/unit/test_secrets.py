"""No secret of a site reaches anything a person or a log can see; files holding one are private.

Covered: `appliance validate` and `appliance render` output, SiteError texts (also when a secret
was written inline by mistake), warnings, repr() of the loaded model and of DesiredState,
redact.Redactor over every rendered file, and the modes of the files `render --root-dir` wrote.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from example_sites import EXAMPLES, FAKE_SECRETS, ROOT, example_id, example_text, load_example, load_text

from appliance.model.loader import INLINE_SECRET, SiteError
from appliance.redact import Redactor
from appliance.render import render_site

SECRETS = tuple(FAKE_SECRETS.values())
# The example with every kind of secret: IPsec PSK (from a file), OSPF MD5 key, BGP password.
ALL_SECRETS_EDITS = (
    ("    psk: {env: DMVPN_PSK}\n", "    psk: {file: psk.secret}\n"),
    ("      key: {env: OSPF_KEY}\n", "      key: {env: OSPF_KEY}\n  bgp:\n    asn: 65000\n"
     "    router_id: 10.0.1.1\n    password: {env: BGP_PASSWORD}\n"),
)  # fmt: skip


def leaks(text: str) -> list[str]:
    return [s for s in SECRETS if s in text]


def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "APPLIANCE_SECRETS_ENV": "/nonexistent/secrets.env", **FAKE_SECRETS}
    return subprocess.run(
        [sys.executable, "-m", "appliance.cli", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=60
    )


@pytest.fixture
def all_secrets_site(tmp_path: Path) -> Path:
    psk = tmp_path / "psk.secret"
    psk.write_text(FAKE_SECRETS["DMVPN_PSK"] + "\n")
    os.chmod(psk, 0o600)
    site = tmp_path / "site.yaml"
    site.write_text(example_text("spoke1", *ALL_SECRETS_EDITS))
    return site


def sites(all_secrets_site: Path) -> list[Path]:
    return [*EXAMPLES, all_secrets_site]


def test_validate_and_render_print_no_secret(all_secrets_site: Path, tmp_path: Path) -> None:
    for site in sites(all_secrets_site):
        r = cli("validate", str(site))
        assert r.returncode == 0, r.stderr
        assert leaks(r.stdout + r.stderr) == [], site
        r = cli("render", str(site), "--root-dir", str(tmp_path / example_id(site) if site in EXAMPLES else tmp_path))
        assert r.returncode == 0, r.stderr
        assert leaks(r.stdout + r.stderr) == [], site


def test_warnings_name_no_secret(tmp_path: Path) -> None:
    short = "shortpsk"  # a warning about the PSK's length must not quote it
    r = subprocess.run(
        [sys.executable, "-m", "appliance.cli", "validate", "examples/spoke1.yaml"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "APPLIANCE_SECRETS_ENV": "/nonexistent", **FAKE_SECRETS, "DMVPN_PSK": short},
        timeout=60,
    )
    assert "warning: ipsec.auth.psk: the PSK has 8 characters" in r.stderr
    assert short not in r.stdout + r.stderr


def test_site_errors_name_no_secret(tmp_path: Path) -> None:
    too_long_key = "sixteen-plus-one!"  # an error about the key's length must not quote it
    env = {**FAKE_SECRETS, "OSPF_KEY": too_long_key}
    text = example_text("spoke1", ("172.16.0.11", "172.16.9.11"))  # an unrelated error beside it
    with pytest.raises(SiteError) as exc:
        load_text(text, tmp_path, env=env)
    assert "at most 16 bytes (this one has 17)" in str(exc.value)
    assert "not inside the overlay" in str(exc.value)
    assert too_long_key not in str(exc.value)
    assert leaks(str(exc.value)) == []


@pytest.mark.parametrize(
    ("edit", "path", "message"),
    [
        (("psk: {env: DMVPN_PSK}", "psk: inline-psk-value-0123"), "ipsec.auth.psk", INLINE_SECRET),
        (("key: {env: OSPF_KEY}", "key: inline-md5"), "routing.ospf.authentication.key", INLINE_SECRET),
        (("key: {env: OSPF_KEY}", 'key: {env: "inline md5"}'), "routing.ospf.authentication.key.env",
         "<redacted> is not a valid env"),
        (("key: {env: OSPF_KEY}", "key: {env: OSPF_KEY, value: inline-md5}"), "routing.ospf.authentication.key.value",
         "unknown field"),
    ],
)  # fmt: skip
def test_a_secret_written_inline_is_not_echoed(tmp_path: Path, edit: tuple[str, str], path: str, message: str) -> None:
    """The error points at the place (file:line:col) but shows neither the value nor its source line."""
    inline = edit[1].split(": ", 1)[1]
    with pytest.raises(SiteError) as exc:
        load_text(example_text("spoke1", edit), tmp_path)
    (problem,) = exc.value.problems
    assert (problem.path, problem.message, problem.source_line) == (path, message, None)
    assert problem.line > 0 and problem.col > 0
    for word in ("inline-psk-value-0123", "inline-md5", "inline md5"):
        if word in inline:
            assert word not in str(exc.value)


def test_repr_of_the_model_and_the_desired_state_holds_no_secret(all_secrets_site: Path) -> None:
    for site in sites(all_secrets_site):
        loaded = load_example(site)
        desired = render_site(loaded.site)
        assert desired.secrets  # the site has secrets, so the checks below can fail
        for text in (repr(loaded), repr(loaded.site), str(loaded.site), repr(desired), str(desired)):
            assert leaks(text) == [], site


def test_redactor_hides_every_secret_in_every_rendered_file(all_secrets_site: Path) -> None:
    for site in sites(all_secrets_site):
        desired = render_site(load_example(site).site)
        assert leaks("".join(f.content for f in desired.files))  # they are really in there
        by_value = Redactor(desired.secrets)
        by_syntax = Redactor()  # a secret nobody listed (an old value in a diff) must be hidden too
        for f in desired.files:
            assert leaks(by_value.text(f.content)) == [], f.path
            assert leaks(by_syntax.text(f.content)) == [], f.path


def test_files_holding_a_secret_are_not_world_readable(all_secrets_site: Path, tmp_path: Path) -> None:
    for site in sites(all_secrets_site):
        root = tmp_path / example_id(site) if site in EXAMPLES else tmp_path / "all-secrets"
        assert cli("render", str(site), "--root-dir", str(root)).returncode == 0
        desired = render_site(load_example(site).site)
        for f in desired.files:
            on_disk = root / f.path.lstrip("/")
            st = on_disk.stat()
            if leaks(on_disk.read_text()):
                assert f.secret, f"{f.path} holds a secret but is not marked secret"
            if not f.secret:
                continue
            assert not st.st_mode & stat.S_IRWXO, f"{f.path} is {stat.filemode(st.st_mode)}"
            mode = stat.S_IMODE(st.st_mode)
            if f.path == "/etc/frr/frr.conf":  # frr must read it: group frr, nobody else
                assert mode == 0o640
                if os.geteuid() == 0:
                    assert (pwd.getpwuid(st.st_uid).pw_name, grp.getgrgid(st.st_gid).gr_name) == ("frr", "frr")
            else:
                assert mode == 0o600, f"{f.path} is {mode:04o}"
