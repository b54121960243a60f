"""A throwaway X.509 CA for lab tests, made with openssl (ECDSA P-256: quick under emulation)."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Credentials:
    ca: Path
    cert: Path
    key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed CA: returns (certificate, key)."""
    directory.mkdir(parents=True, exist_ok=True)
    key, cert = directory / f"{name}.key", directory / f"{name}.pem"
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key), cwd=directory)
    _openssl(
        "req",
        "-x509",
        "-new",
        "-key",
        str(key),
        "-sha256",
        "-days",
        "30",
        "-subj",
        f"/O=appliance-lab/CN={name}",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-out",
        str(cert),
        cwd=directory,
    )
    os.chmod(key, 0o600)
    return cert, key


def issue(directory: Path, ca: tuple[Path, Path], hostname: str, address: str) -> Credentials:
    """A router certificate: CN and DNS SAN = hostname, IP SAN = its NBMA address."""
    ca_cert, ca_key = ca
    key, csr, cert = (directory / f"{hostname}.{ext}" for ext in ("key", "csr", "pem"))
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key), cwd=directory)
    _openssl(
        "req", "-new", "-key", str(key), "-subj", f"/O=appliance-lab/CN={hostname}", "-out", str(csr), cwd=directory
    )
    ext = directory / f"{hostname}.ext"
    ext.write_text(f"subjectAltName=DNS:{hostname},IP:{address}\nextendedKeyUsage=serverAuth,clientAuth\n")
    _openssl(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca_cert),
        "-CAkey",
        str(ca_key),
        "-CAcreateserial",
        "-days",
        "30",
        "-sha256",
        "-extfile",
        str(ext),
        "-out",
        str(cert),
        cwd=directory,
    )
    os.chmod(key, 0o600)
    return Credentials(ca_cert, cert, key)
