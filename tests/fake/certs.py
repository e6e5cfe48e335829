"""Throwaway certificate authorities for the fake cloud.

The fake serves HTTPS with a server certificate for 127.0.0.1, ::1 and
localhost, signed by a CA made for one state directory.  mdhunt trusts that
CA through [api] ca_file.  A second, unrelated CA lets a test check that a
client which trusts the wrong CA fails the TLS handshake.
"""

import datetime
import ipaddress
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_FILE = "ca.pem"
OTHER_CA_FILE = "other-ca.pem"
SERVER_CERT_FILE = "server.pem"
SERVER_KEY_FILE = "server-key.pem"

# Long enough for a test run, short enough that a leaked file is useless.
VALIDITY = datetime.timedelta(days=30)


def _name(common_name):
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mdhunt fake cloud"),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])


def _make_ca(common_name, now):
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(common_name)
    public_key = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0),
                       critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False,
            key_encipherment=False, data_encipherment=False,
            key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _make_server_cert(ca_key, ca_cert, now):
    key = ec.generate_private_key(ec.SECP256R1())
    public_key = key.public_key()
    names = x509.SubjectAlternativeName([
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ])
    ca_ski = ca_cert.extensions.get_extension_for_class(
        x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + VALIDITY)
        .add_extension(names, critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                       critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False,
            key_agreement=False, key_cert_sign=False, crl_sign=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
            critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key),
                       critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                ca_ski),
            critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _write(path, data, mode=0o644):
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM)


def ensure_certificates(state_dir):
    """Create the CA, server and other-CA files unless ca.pem exists.

    Returns (server certificate path, server key path).  The CA keys are
    not kept, so a new server certificate needs a new ca.pem: delete
    ca.pem to start over.
    """
    cert_path = os.path.join(state_dir, SERVER_CERT_FILE)
    key_path = os.path.join(state_dir, SERVER_KEY_FILE)
    ca_path = os.path.join(state_dir, CA_FILE)
    if (os.path.exists(ca_path) and os.path.exists(cert_path)
            and os.path.exists(key_path)):
        return cert_path, key_path

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, ca_cert = _make_ca("mdhunt fake cloud test CA", now)
    server_key, server_cert = _make_server_cert(ca_key, ca_cert, now)
    _, other_ca_cert = _make_ca("mdhunt unrelated test CA", now)

    key_pem = server_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    _write(key_path, key_pem, 0o600)
    _write(cert_path, _pem(server_cert))
    _write(os.path.join(state_dir, OTHER_CA_FILE), _pem(other_ca_cert))
    # ca.pem last: its presence means the whole set is complete.
    _write(ca_path, _pem(ca_cert))
    return cert_path, key_path
