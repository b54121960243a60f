"""The example sites the renderer tests run on, and the obviously fake secrets they are given.

examples/lab*.yaml are lab topologies (tests/lab), not product examples: left out here.
"""

from __future__ import annotations

from pathlib import Path

from appliance.model.validate import LoadedSite, load_site

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES_DIR = ROOT / "examples"
EXAMPLES = sorted(
    p
    for p in EXAMPLES_DIR.rglob("*.yaml")
    if not any(part.startswith("lab") for part in p.relative_to(EXAMPLES_DIR).parts)
)

# Distinctive values, so that a leak test finds them anywhere; never real secrets.
FAKE_SECRETS = {
    "DMVPN_PSK": "fake-psk-NOT-A-SECRET-4f1c2b7a9d",
    "OSPF_KEY": "fakeMD5-9e8d7c",  # at most 16 bytes (an OSPF MD5 key)
    "BGP_PASSWORD": "fake-bgp-pw-5a6b3c",
}
FRR_VERSION = (8, 4)  # Debian 12's FRR: what the examples target


def example_id(path: Path) -> str:
    """examples/bgp/hub.yaml -> 'bgp/hub'."""
    return path.relative_to(EXAMPLES_DIR).with_suffix("").as_posix()


def load_example(path: Path, env: dict[str, str] | None = None) -> LoadedSite:
    return load_site(path, env=FAKE_SECRETS if env is None else env, frr_version=FRR_VERSION)


def example_text(name: str, *edits: tuple[str, str]) -> str:
    """An example's YAML with some lines replaced; each old text must be there (no silent no-op)."""
    text = (EXAMPLES_DIR / f"{name}.yaml").read_text()
    for old, new in edits:
        assert old in text, f"{old!r} is not in examples/{name}.yaml"
        text = text.replace(old, new, 1)
    return text


def load_text(text: str, directory: Path, env: dict[str, str] | None = None) -> LoadedSite:
    """Load a site given as YAML text (written to directory/site.yaml) with the fake secrets."""
    path = directory / "site.yaml"
    path.write_text(text)
    return load_example(path, env)
