"""python-nftables is Debian's python3-nftables (not on PyPI): the one place that imports it.

A virtualenv sees it only when created with --system-site-packages on /usr/bin/python3 (the
Makefile does that); everything that talks to nftables gets its handle from `load_nftables`.
"""

from __future__ import annotations

from typing import Any

MISSING_NFTABLES = (
    "python3-nftables missing (apt-get install python3-nftables; a virtualenv needs --system-site-packages)"
)


class NftablesMissing(RuntimeError):
    """python-nftables cannot be imported; str() is the one-line fix (callers wrap it in their error type)."""


def load_nftables() -> Any:
    """A new `nftables.Nftables()` handle with JSON output, or NftablesMissing saying how to install it."""
    try:
        import nftables
    except ImportError:
        raise NftablesMissing(MISSING_NFTABLES) from None
    nft = nftables.Nftables()
    nft.set_json_output(True)
    return nft
