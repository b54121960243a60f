"""The DMVPN with X.509 certificates from a test CA instead of a PSK; a spoke whose certificate
comes from another CA is refused. Certificates, sites and the topology are made per run under
build/lab-x509/ (tests/lab/pki.py: openssl, ECDSA P-256)."""

from __future__ import annotations

import shutil

import pytest
from dmvpn import (
    REPO,
    appliance,
    cache_entry,
    ping,
    pinging,
    run_and_expect,
    sas_with,
    wait_ospf_full,
    wait_ping,
)
from pki import issue, make_ca

pytestmark = pytest.mark.lab

WORK = REPO / "build" / "lab-x509"
X509_AUTH = "  auth:\n    x509: {{ca: {name}-ca.pem, cert: {node}.pem, key: {node}.key}}\n"
ROUTERS = {"hub": "192.0.2.2", "spoke1": "198.51.100.2", "spoke2": "198.51.100.6"}
TOPOLOGY = """\
name: x509
supervise: true
supervise_interval: 15
nodes:
  inet:
    kind: internet
    interfaces: {eth1: 192.0.2.1/30, eth2: 198.51.100.1/30, eth3: 198.51.100.5/30, eth5: 198.51.100.13/30}
  hub: {kind: router, site: hub.yaml}
  spoke1: {kind: router, site: spoke1.yaml}
  spoke2: {kind: router, site: spoke2.yaml}
  foreign: {kind: linux}
  host1: {kind: host, address: 10.0.1.10/24, gateway: 10.0.1.1}
  host2: {kind: host, address: 10.0.2.10/24, gateway: 10.0.2.1}
links:
  - endpoints: [inet:eth1, hub:eth0]
  - endpoints: [inet:eth2, spoke1:eth0]
  - endpoints: [inet:eth3, spoke2:eth0]
  - endpoints: [inet:eth5, foreign:eth0]
  - endpoints: [spoke1:eth1, host1:eth0]
  - endpoints: [spoke2:eth1, host2:eth0]
"""
FOREIGN_SITE = """\
system: {hostname: foreign}
interfaces:
  public: {name: eth0, address: 198.51.100.14/30, gateway: 198.51.100.13}
dmvpn:
  role: spoke
  tunnel: {address: 172.16.0.66, prefix: 172.16.0.0/24, key: 42}
  nhrp:
    network_id: 42
    nhs: [{address: 172.16.0.1, nbma: 192.0.2.2}]
ipsec:
""" + X509_AUTH.format(name="other", node="foreign")


def with_x509(site: str, node: str) -> str:
    head, _, rest = site.partition("ipsec:\n  auth:\n    psk: {env: DMVPN_PSK}\n")
    assert rest, f"examples/{node}.yaml has no PSK block to replace"
    return head + "ipsec:\n" + X509_AUTH.format(name="lab", node=node) + rest


@pytest.fixture(scope="module")
def x509(lab_factory):
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    ca = make_ca(WORK, "lab-ca")
    for node, address in ROUTERS.items():
        issue(WORK, ca, node, address)
        site = (REPO / "examples" / f"{node}.yaml").read_text()
        (WORK / f"{node}.yaml").write_text(with_x509(site, node))
    issue(WORK, make_ca(WORK, "other-ca"), "foreign", "198.51.100.14")
    (WORK / "foreign.yaml").write_text(FOREIGN_SITE)
    (WORK / "x509.yaml").write_text(TOPOLOGY)
    lab = lab_factory(WORK / "x509.yaml")
    wait_ospf_full(lab, "hub", 2)
    return lab


def test_certificates_authenticate_the_dmvpn(x509):
    sa = run_and_expect(lambda: sas_with(x509, "spoke1", "192.0.2.2"), lambda s: len(s) > 0, 120)[0]
    assert sa["state"] == "ESTABLISHED" and sa["remote_id"] == "O=appliance-lab, CN=hub", sa
    assert cache_entry(x509, "hub", "172.16.0.11")["type"] == "dynamic"
    wait_ping(x509, "host1", "10.0.2.10")
    # the spoke-to-spoke SA comes with the shortcut, which needs traffic while it forms
    run_and_expect(pinging(x509, "host1", "10.0.2.10", lambda: sas_with(x509, "spoke1", "198.51.100.6")), len, 120)
    assert ping(x509, "host1", "10.0.2.10")[0] == 3


def test_a_certificate_from_another_ca_is_refused(x509):
    appliance(x509, "foreign", f"apply {WORK / 'foreign.yaml'}")
    for _ in range(3):
        ping(x509, "foreign", "172.16.0.1", count=3)
    established = [sa for sa in sas_with(x509, "hub", "198.51.100.14") if sa["state"] == "ESTABLISHED"]
    assert established == []
    assert cache_entry(x509, "hub", "172.16.0.66") is None
    log = x509.check("hub", "tail -n 300 /var/log/syslog")
    assert (
        "no trusted ECDSA public key found" in log
        or "constraint check failed" in log
        or ("AUTHENTICATION_FAILED" in log)
    ), log[-2000:]
