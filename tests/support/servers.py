"""Data servers of a test's own, for tests that stop and start them (the machine's shared ones
are never stopped)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from oraclewad.provision.embedded import EmbeddedPostgres


@contextmanager
def private_postgres(*, shared_socket: bool = False) -> Iterator[EmbeddedPostgres]:
    """An embedded PostgreSQL in a fresh folder, stopped and removed at the end. shared_socket:
    its socket in a folder other uids reach (tenant users connect as to a server of the machine)."""
    root = Path(tempfile.mkdtemp(prefix="owa-pg-"))
    if shared_socket:
        root.chmod(0o711)
    server = EmbeddedPostgres(root / "pg", socket_dir=root / "sock" if shared_socket else None)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def make_certificate(root: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1/localhost (cert, key), made with openssl."""
    cert, key = root / "cert.pem", root / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True)
    return cert, key


@dataclass
class TlsRedis:
    url: str          # rediss://127.0.0.1:PORT/0
    ca_file: Path     # the server's own certificate: trusting it is trusting a private CA


@contextmanager
def private_tls_redis() -> Iterator[TlsRedis]:
    """A redis-server speaking only TLS, with a certificate no system store trusts; stopped and
    removed at the end. Its files are readable by other uids (tenant users read the CA file)."""
    root = Path(tempfile.mkdtemp(prefix="owa-tls-redis-"))
    root.chmod(0o755)
    cert, key = make_certificate(root)
    cert.chmod(0o644)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(cert),
         "--tls-auth-clients", "no", "--save", "", "--appendonly", "no", "--dir", str(root)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the TLS redis-server did not start") from None
                time.sleep(0.05)
        yield TlsRedis(url=f"rediss://127.0.0.1:{port}/0", ca_file=cert)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(root, ignore_errors=True)
