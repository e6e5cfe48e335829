#!/usr/bin/python3
"""Loopback SMTP server for mdhunt's mail tests.

Runs aiosmtpd (Debian 12: python3-aiosmtpd 1.4) on 127.0.0.1 with a
certificate from a throwaway CA made at start with python3-cryptography.
The CA certificate goes to --ca-file so that the client can trust it, and
the listening port goes to --port-file once the server accepts connections.

TLS modes (--tls):
  starttls  offer STARTTLS and require it before MAIL (the default)
  implicit  TLS from the first byte, as smtps:// on port 465
  reject    offer STARTTLS in EHLO but reply 454 to it.  Mail in clear
            text is accepted, so a client that falls back is caught.
  none      offer no STARTTLS.  Mail in clear text is accepted, as above.

Each accepted message is saved into --save-dir as NNNN.eml (the bytes
received after DATA, dot-unstuffed) and NNNN.json (envelope sender,
recipients, whether TLS was on, the user that logged in).  Numbering
continues after the files already there, so a restarted server keeps
the earlier messages.  With --delay-data the server saves a message and
then waits before it replies to DATA, which lets a test kill the client
while the server holds the message but the client has no reply yet.
The server stops on SIGTERM or SIGINT, and after --lifetime seconds in
any case.

Usage from a test:
  /usr/bin/python3 tests/smtp/smtpserver.py --port-file DIR/port \\
      --ca-file DIR/ca.pem --save-dir DIR/mail --user u --password p
"""

import argparse
import asyncio
import datetime
import ipaddress
import json
import logging
import os
import signal
import ssl
import sys
import tempfile

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def make_certificates(directory):
    """Create a CA and a server certificate for localhost and 127.0.0.1.

    Return the paths of the CA certificate, the server certificate and the
    server key, all PEM files in directory.
    """
    now = datetime.datetime.now(datetime.timezone.utc)
    start = now - datetime.timedelta(hours=1)
    end = now + datetime.timedelta(days=1)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, "mdhunt test SMTP CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0),
                       critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=False, content_commitment=False,
                          key_encipherment=False, data_encipherment=False,
                          key_agreement=False, key_cert_sign=True,
                          crl_sign=True, encipher_only=False,
                          decipher_only=False),
            critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
            critical=False)
        .sign(ca_key, hashes.SHA256()))

    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(
            [x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                       critical=True)
        .add_extension(
            x509.SubjectAlternativeName([
                x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            ]),
            critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
            critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()),
            critical=False)
        .sign(ca_key, hashes.SHA256()))

    paths = (os.path.join(directory, "ca.pem"),
             os.path.join(directory, "server.pem"),
             os.path.join(directory, "server.key"))
    with open(paths[0], "wb") as f:
        f.write(ca_cert.public_bytes(serialization.Encoding.PEM))
    with open(paths[1], "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(paths[2], "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return paths


def write_atomically(path, data):
    """Write data (bytes) so that readers never see a partial file."""
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


class StarttlsRejectingSMTP(SMTP):
    """An SMTP server that offers STARTTLS but rejects the command."""

    async def smtp_STARTTLS(self, arg):
        await self.push("454 4.7.0 TLS not available due to temporary "
                        "reason")


class Handler:
    """Envelope checks, injected failures and saving of messages."""

    def __init__(self, args):
        self.args = args
        self.count = last_saved_number(args.save_dir)
        self.delayed = 0

    async def handle_MAIL(self, server, session, envelope, address,
                          mail_options):
        if self.args.fail_mail:
            return f"{self.args.fail_mail} injected failure for MAIL"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address,
                          rcpt_options):
        if self.args.fail_rcpt:
            return f"{self.args.fail_rcpt} injected failure for RCPT"
        if address.lower() in self.args.reject_rcpt:
            return f"550 5.1.1 <{address}>: recipient address rejected"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.args.fail_data:
            return f"{self.args.fail_data} injected failure for DATA"
        if self.args.save_dir:
            self.count += 1
            base = os.path.join(self.args.save_dir, f"{self.count:04d}")
            info = {
                "mail_from": envelope.mail_from,
                "rcpt_tos": envelope.rcpt_tos,
                "tls": session.ssl is not None or self.args.tls == "implicit",
                "auth": session.auth_data,
            }
            write_atomically(base + ".eml", envelope.original_content)
            write_atomically(base + ".json",
                             json.dumps(info, indent=1).encode("utf-8"))
        if self.args.delay_data > 0 and (
                self.args.delay_count == 0
                or self.delayed < self.args.delay_count):
            self.delayed += 1
            await asyncio.sleep(self.args.delay_data)
        return "250 2.0.0 OK message accepted"


def last_saved_number(directory):
    """Return the highest NNNN of the NNNN.eml files in directory, or 0."""
    if not directory or not os.path.isdir(directory):
        return 0
    numbers = [int(name[:-4]) for name in os.listdir(directory)
               if name.endswith(".eml") and name[:-4].isdigit()]
    return max(numbers, default=0)


def make_authenticator(user, password):
    """Accept AUTH PLAIN and LOGIN for exactly one user and password."""
    def authenticate(server, session, envelope, mechanism, auth_data):
        ok = (isinstance(auth_data, LoginPassword)
              and auth_data.login == user.encode("utf-8")
              and auth_data.password == password.encode("utf-8"))
        if ok:
            return AuthResult(success=True, auth_data=user)
        # handled=False makes aiosmtpd reply 535 itself.
        return AuthResult(success=False, handled=False)
    return authenticate


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, default=0,
                   help="TCP port on 127.0.0.1; 0 picks a free one")
    p.add_argument("--port-file", required=True,
                   help="file that receives the port once listening")
    p.add_argument("--ca-file", required=True,
                   help="file that receives the CA certificate (PEM)")
    p.add_argument("--save-dir", help="directory for received messages")
    p.add_argument("--tls", default="starttls",
                   choices=("starttls", "implicit", "reject", "none"))
    p.add_argument("--user", help="require AUTH PLAIN or LOGIN as this user")
    p.add_argument("--password", default="", help="password of --user")
    p.add_argument("--fail-mail", help="reply code (and text) for MAIL")
    p.add_argument("--fail-rcpt", help="reply code (and text) for RCPT")
    p.add_argument("--fail-data", help="reply code for the end of DATA")
    p.add_argument("--reject-rcpt", action="append", default=[],
                   help="reply 550 to RCPT for this address (repeatable)")
    p.add_argument("--delay-data", type=float, default=0.0,
                   help="seconds to wait, after saving a message, before "
                        "the reply to DATA")
    p.add_argument("--delay-count", type=int, default=0,
                   help="delay only the first N messages (0: every one)")
    p.add_argument("--lifetime", type=float, default=120.0,
                   help="seconds after which the server stops on its own")
    args = p.parse_args(argv)
    args.reject_rcpt = [a.lower() for a in args.reject_rcpt]
    return args


def make_factory(args, context, loop):
    """Return the protocol factory for one listening socket."""
    secure = args.tls in ("starttls", "implicit")
    kwargs = {
        "hostname": "mdhunt-test-smtp",
        "loop": loop,
        "auth_required": bool(args.user) and secure,
        # An implicit TLS connection is encrypted although aiosmtpd did not
        # run STARTTLS itself.
        "auth_require_tls": args.tls != "implicit",
    }
    if args.user:
        kwargs["authenticator"] = make_authenticator(args.user, args.password)
    if args.tls in ("starttls", "reject"):
        kwargs["tls_context"] = context
        kwargs["require_starttls"] = args.tls == "starttls"
    cls = StarttlsRejectingSMTP if args.tls == "reject" else SMTP
    handler = Handler(args)
    return lambda: cls(handler, **kwargs)


async def serve(args, context):
    loop = asyncio.get_running_loop()
    stop = loop.create_future()

    def request_stop():
        if not stop.done():
            stop.set_result(None)

    for signo in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signo, request_stop)
    loop.call_later(args.lifetime, request_stop)

    server = await loop.create_server(
        make_factory(args, context, loop), host="127.0.0.1", port=args.port,
        ssl=context if args.tls == "implicit" else None)
    port = server.sockets[0].getsockname()[1]
    write_atomically(args.port_file, f"{port}\n".encode("ascii"))

    await stop
    server.close()
    await server.wait_closed()


def main(argv):
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    # aiosmtpd 1.4 warns about its own deprecated Session.login_data on
    # every AUTH.  It also logs a traceback for every TLS handshake that a
    # test makes fail on purpose, and the tests check the client instead.
    logging.getLogger("mail.log").setLevel(logging.CRITICAL)
    if args.save_dir:
        os.makedirs(args.save_dir, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="mdhunt-smtp-") as tmp:
        ca, cert, key = make_certificates(tmp)
        with open(ca, "rb") as f:
            write_atomically(args.ca_file, f.read())
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        asyncio.run(serve(args, context))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
