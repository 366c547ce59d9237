"""The Deployment Engine over TLS with SuperNode authentication, on loopback only.

A CA and a SuperLink certificate (SAN IP:127.0.0.1, DNS:localhost) are made inside the test; the
SuperLink runs with ``--ssl-ca-certfile/--ssl-certfile/--ssl-keyfile`` and ``--enable-supernode-auth``;
two SuperNodes whose EC (P-384) public keys were registered with ``flwr supernode register`` train one
Standard-FL round, and a third SuperNode with an unregistered key is refused by the SuperLink.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509  # a dependency of flwr itself
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fl_helpers import REPO, free_port, tiny_overrides
from test_engines import _alive_in_group, _start, _stop, _toml, _wait_port, loopback_deployment_env

BINDIR = Path(sys.executable).parent
CLIENT_IDS = ["hau-seen-00", "hau-seen-01"]


def _write_key(key, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def make_tls_files(folder: Path) -> dict[str, Path]:
    """A self-signed CA (``ca.crt``) and a server certificate it signs (``server.pem``, ``server.key``)
    valid for 127.0.0.1 and localhost."""
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedp2eft test CA")])
    ca_cert = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                            content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False, encipher_only=False,
                                            decipher_only=False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
               .sign(ca_key, hashes.SHA256()))
    server_key = ec.generate_private_key(ec.SECP384R1())
    server_cert = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
                   .issuer_name(ca_name).public_key(server_key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                               x509.DNSName("localhost")]), critical=False)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                                  critical=False)
                   .sign(ca_key, hashes.SHA256()))
    files = {"ca": folder / "ca.crt", "cert": folder / "server.pem", "key": folder / "server.key"}
    files["ca"].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files["cert"].write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    _write_key(server_key, files["key"])
    return files


def make_node_keys(folder: Path, name: str) -> tuple[Path, Path]:
    """An EC P-384 key pair in OpenSSH format, as ``ssh-keygen -t ecdsa -b 384`` writes it:
    ``<name>`` (private) and ``<name>.pub`` (public)."""
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private, public = folder / name, folder / f"{name}.pub"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                          serialization.NoEncryption()))
    private.chmod(0o600)
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                     serialization.PublicFormat.OpenSSH) + b"\n")
    return private, public


def tls_deployment_env(tmp_path, ca: Path) -> tuple[dict, int]:
    """``loopback_deployment_env``, but the ``loopback`` connection verifies the SuperLink with ``ca``."""
    env, link_port = loopback_deployment_env(tmp_path)
    (Path(env["FLWR_HOME"]) / "config.toml").write_text(
        f'[superlink]\ndefault = "loopback"\n\n[superlink.loopback]\naddress = "127.0.0.1:{link_port}"\n'
        f"root-certificates = {json.dumps(str(ca))}\n")
    return env, link_port


def start_tls_superlink(tmp_path, env, link_port: int, tls: dict[str, Path], procs: list) -> None:
    procs.append(_start([str(BINDIR / "flower-superlink"), "--ssl-ca-certfile", str(tls["ca"]),
                         "--ssl-certfile", str(tls["cert"]), "--ssl-keyfile", str(tls["key"]),
                         "--enable-supernode-auth", "--host", "127.0.0.1", "--port", str(link_port),
                         "--database", str(tmp_path / "link.db")], tmp_path / "link.log", env, tmp_path))
    _wait_port(link_port)


def start_auth_supernode(tmp_path, env, link_port: int, ca: Path, private_key: Path, client_id: str,
                         log_name: str, procs: list) -> int:
    """A SuperNode that verifies the SuperLink with ``ca`` and signs its requests with ``private_key``;
    returns the port of its (local) Runtime API."""
    port = free_port()
    procs.append(_start([str(BINDIR / "flower-supernode"), "--root-certificates", str(ca),
                         "--superlink", f"127.0.0.1:{link_port}", "--auth-supernode-private-key", str(private_key),
                         "--port", str(port), "--node-config", f'client-id="{client_id}"'],
                        tmp_path / log_name, env, tmp_path))
    return port


def flwr_cli(args: list[str], env, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(BINDIR / "flwr"), *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=REPO)


def _wait_exit(proc: subprocess.Popen, timeout: float) -> int | None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    return proc.poll()


def _peer_certificate(port: int, ca: Path | None) -> dict:
    """The TLS handshake with the SuperLink, verified against ``ca`` (or the system trust store)."""
    context = ssl.create_default_context(cafile=str(ca) if ca else None)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            return tls.getpeercert()


@pytest.mark.integration
def test_tls_and_supernode_auth_on_loopback(tmp_path, masakhanews_dir):
    tls = make_tls_files(tmp_path / "tls")
    env, link_port = tls_deployment_env(tmp_path, tls["ca"])
    config = tmp_path / "deploy.toml"
    config.write_text(_toml(tiny_overrides(masakhanews_dir, languages=("hau",), clients=2, rounds=1,
                                           **{"federation.engine": '"deployment"', "federation.fraction": 1.0})))
    out = tmp_path / "deploy-out"
    app = REPO  # the FAB leaves benchmarks/ and tests/ out (pyproject fab-exclude)
    keys = [make_node_keys(tmp_path / "keys", f"node{i}") for i in range(len(CLIENT_IDS))]
    stranger_key, _ = make_node_keys(tmp_path / "keys", "stranger")  # never registered
    procs: list[subprocess.Popen] = []
    try:
        start_tls_superlink(tmp_path, env, link_port, tls, procs)
        # the SuperLink speaks TLS with the certificate our CA signed, and only that CA vouches for it
        cert = _peer_certificate(link_port, tls["ca"])
        assert ("IP Address", "127.0.0.1") in cert["subjectAltName"]
        with pytest.raises(ssl.SSLCertVerificationError):
            _peer_certificate(link_port, None)

        # register the two SuperNodes' public keys through the Control API (over TLS)
        node_ids = []
        for _, public in keys:
            reg = flwr_cli(["supernode", "register", str(public), "loopback", "--format", "json"], env)
            assert reg.returncode == 0, reg.stdout + reg.stderr
            reply = json.loads(reg.stdout[reg.stdout.index("{"):])
            assert reply["success"], reply
            node_ids.append(str(reply["node-id"]))
        listed = flwr_cli(["supernode", "list", "loopback", "--format", "json"], env)
        assert listed.returncode == 0, listed.stdout + listed.stderr
        nodes = json.loads(listed.stdout[listed.stdout.index("{"):])["nodes"]
        assert sorted(n["node-id"] for n in nodes) == sorted(node_ids)
        assert all(n["status"] == "registered" for n in nodes), nodes

        ports = [start_auth_supernode(tmp_path, env, link_port, tls["ca"], private, cid, f"node{i}.log", procs)
                 for i, ((private, _), cid) in enumerate(zip(keys, CLIENT_IDS))]
        start_auth_supernode(tmp_path, env, link_port, tls["ca"], stranger_key, "hau-seen-02", "stranger.log",
                             procs)
        for port in ports:
            _wait_port(port)

        run = subprocess.run([str(BINDIR / "flwr"), "run", str(app), "loopback", "--stream", "--run-config",
                              f'config="{config}" out="{out}"'], capture_output=True, text=True, timeout=600,
                             env=env, cwd=REPO)
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
        lines = (out / "base_model" / "rounds.jsonl").read_text().splitlines()
        assert len(lines) == 1
        rnd = json.loads(lines[0])
        assert rnd["round"] == 1 and sorted(rnd["sampled"]) == CLIENT_IDS and not rnd["failed"]

        # the SuperNode with the unregistered key: refused by the SuperLink, it gives up and exits non-zero
        code = _wait_exit(procs[-1], 60)  # procs[-1] is the stranger
        stranger_log = (tmp_path / "stranger.log").read_text()
        link_log = (tmp_path / "link.log").read_text()
        assert code not in (None, 0), f"unregistered SuperNode still running (exit {code}):\n{stranger_log[-3000:]}"
        assert "Failed to activate SuperNode" in stranger_log, stranger_log[-3000:]
        assert "No SuperNode found with the given public key" in link_log, link_log[-3000:]
        # ... while each registered SuperNode was activated under the node id its registration got
        for i, node_id in enumerate(node_ids):
            assert f"[Fleet.ActivateNode] Activated node_id={node_id}" in link_log, link_log[-3000:]
            assert f"SuperNode ID: {node_id}" in (tmp_path / f"node{i}.log").read_text()
        assert link_log.count("[Fleet.ActivateNode] Activated node_id=") == len(CLIENT_IDS), link_log[-3000:]
    finally:
        _stop(procs)
    assert not any(_alive_in_group(p.pid) for p in procs)
