"""Run a test body in a fresh network namespace: a forked child unshares its netns, the parent reports.

Netlink and nftables act on the calling process's namespace, so each test gets its own child
process: nothing it creates (veth pairs, addresses, routes, tables) can leak into the host or
into the next test, and the namespace disappears with the child.
"""

from __future__ import annotations

import ctypes
import functools
import os
import pickle
import traceback
from collections.abc import Callable
from typing import Any

CLONE_NEWNET = 0x40000000


def _unshare_net() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare(CLONE_NEWNET): {os.strerror(err)} (the unit tests run as root)")


def _loopback_up() -> None:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")


def run_in_fresh_netns(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """fn(*args, **kwargs) in a child process inside a new network namespace; its result or its failure."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 1
        try:
            os.close(read_end)
            _unshare_net()
            _loopback_up()
            outcome = ("ok", fn(*args, **kwargs))
            code = 0
        except BaseException:
            outcome = ("error", traceback.format_exc())
        try:
            data = pickle.dumps(outcome)
        except Exception as e:
            data, code = pickle.dumps(("error", f"result not picklable: {e}")), 1
        with os.fdopen(write_end, "wb") as out:
            out.write(data)
        os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as inp:
        data = inp.read()
    _, status = os.waitpid(pid, 0)
    if not data:
        raise AssertionError(f"netns child died without a result (wait status {status})")
    kind, value = pickle.loads(data)
    if kind == "error":
        raise AssertionError("in the test's network namespace:\n" + value)
    return value


def in_fresh_netns(test: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator: the test body runs in its own network namespace (fixtures are resolved by pytest first)."""

    @functools.wraps(test)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return run_in_fresh_netns(test, *args, **kwargs)

    return wrapper
