#!/usr/bin/python3
"""A fast static stand-in for Entra ID and Graph, for the benchmark.

Usage: /usr/bin/python3 bench/serve.py --state DIR --default FILE
           [--reply MARKER=FILE ...]

tests/fake/fakecloud.py renders every reply from its dataset on each
request, which for a 100,000-row result costs the fake more time than
the client under test spends.  This server reads pre-rendered reply
bodies once at start and only copies them to the socket, so that the
benchmark times the client and not the server.  It serves HTTPS on
127.0.0.1 with the fake cloud's throwaway CA (DIR/ca.pem), writes its
port to DIR/port, and handles:

  GET  /{tenant}/v2.0/.well-known/openid-configuration  (for MSAL)
  POST /{tenant}/oauth2/v2.0/token     client credentials, checked
  POST /v1.0/security/runHuntingQuery  the body of the first --reply
                                       whose MARKER occurs in the
                                       request, else the --default body

A hunting request needs the token this server issued.  Every other
request gets a 4xx reply, so a client that sends the wrong thing fails
instead of being timed.
"""

import argparse
import json
import os
import signal
import socket
import ssl
import sys
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.dont_write_bytecode = True
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests", "fake"))

import certs  # noqa: E402
import fakestate  # noqa: E402

HOST = "127.0.0.1"
TENANT_ID = fakestate.TENANT_ID
CLIENT_ID = fakestate.CLIENT_ID
SECRET = fakestate.SECRET
GRAPH_SCOPE = fakestate.GRAPH_RESOURCE + "/.default"
# A fixed opaque token: the benchmark has no use for expiry.
ACCESS_TOKEN = "bench-" + fakestate.TOKEN_MARKER + "-0123456789abcdef"
MAX_REQUEST_BODY = 1024 * 1024
GRAPH_JSON_TYPE = ("application/json;odata.metadata=minimal;"
                   "odata.streaming=true;IEEE754Compatible=false;"
                   "charset=utf-8")
JSON_TYPE = "application/json; charset=utf-8"
# Seconds an idle keep-alive connection is kept.
SOCKET_TIMEOUT = 120


def token_reply():
    """Return the body of a successful v2 client-credentials reply."""
    return json.dumps({"token_type": "Bearer", "expires_in": 3599,
                       "ext_expires_in": 3599,
                       "access_token": ACCESS_TOKEN}).encode()


def openid_configuration(base):
    """Return the tenant's OpenID configuration, pointing back at us."""
    return json.dumps({
        "issuer": "%s/%s/v2.0" % (base, TENANT_ID),
        "authorization_endpoint":
            "%s/%s/oauth2/v2.0/authorize" % (base, TENANT_ID),
        "token_endpoint": "%s/%s/oauth2/v2.0/token" % (base, TENANT_ID),
    }).encode()


def error_body(code, message):
    return json.dumps({"error": {"code": code, "message": message}}).encode()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "mdhunt-bench"
    timeout = SOCKET_TIMEOUT

    def setup(self):
        # The headers and the body go out in two writes.  Without
        # TCP_NODELAY the second waits for the client's delayed ACK
        # (40 ms on Linux), which would dominate a small request.
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.request.settimeout(SOCKET_TIMEOUT)
        self.request.do_handshake()
        super().setup()

    def log_message(self, fmt, *args):
        pass

    def _read_body(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length < 0 or length > MAX_REQUEST_BODY:
            raise ValueError("Content-Length %d out of range" % length)
        return self.rfile.read(length)

    def _send(self, status, body, content_type=JSON_TYPE):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        path = urllib.parse.urlsplit(self.path).path
        if path == "/%s/v2.0/.well-known/openid-configuration" % TENANT_ID:
            self._send(200, openid_configuration(self.server.base_url))
            return
        self._send(404, error_body("NotFound", "no GET endpoint here"))

    def do_POST(self):
        try:
            body = self._read_body()
        except ValueError as e:
            self.close_connection = True
            self._send(400, error_body("BadRequest", str(e)))
            return
        path = urllib.parse.urlsplit(self.path).path
        if path == "/%s/oauth2/v2.0/token" % TENANT_ID:
            self._token(body)
        elif path.lower() == "/v1.0/security/runhuntingquery":
            self._hunt(body)
        else:
            self._send(404, error_body("NotFound", "no endpoint " + path))

    def _token(self, body):
        form = urllib.parse.parse_qs(body.decode("utf-8", "replace"))
        expected = {"grant_type": "client_credentials",
                    "client_id": CLIENT_ID, "client_secret": SECRET,
                    "scope": GRAPH_SCOPE}
        for name, value in expected.items():
            if form.get(name) != [value]:
                self._send(401, json.dumps({
                    "error": "invalid_client",
                    "error_description": "bench server: wrong or missing "
                                         "form field " + name}).encode())
                return
        self._send(200, token_reply())

    def _hunt(self, body):
        if self.headers.get("Authorization") != "Bearer " + ACCESS_TOKEN:
            self._send(401, error_body("InvalidAuthenticationToken",
                                       "bench server: unknown token"))
            return
        for marker, reply in self.server.replies:
            if marker in body:
                self._send(200, reply, GRAPH_JSON_TYPE)
                return
        self._send(200, self.server.default_reply, GRAPH_JSON_TYPE)


class BenchServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port, replies, default_reply):
        super().__init__((HOST, port), Handler)
        self.replies = replies
        self.default_reply = default_reply
        self.base_url = "https://%s:%d" % (HOST, self.server_address[1])


def read_file(path):
    with open(path, "rb") as f:
        return f.read()


def parse_reply_option(text):
    marker, sep, path = text.partition("=")
    if not sep or not marker or not path:
        raise argparse.ArgumentTypeError(
            "--reply %r: expected MARKER=FILE" % text)
    return marker.encode("utf-8"), read_file(path)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Serve pre-rendered token and hunting replies over "
                    "TLS on %s for the benchmark." % HOST)
    parser.add_argument("--state", required=True,
                        help="directory for the CA, the certificate and "
                             "the port file")
    parser.add_argument("--default", required=True,
                        help="hunting reply body for queries that match "
                             "no --reply marker")
    parser.add_argument("--reply", action="append", default=[],
                        type=parse_reply_option,
                        help="MARKER=FILE: reply FILE to queries whose "
                             "request body contains MARKER")
    parser.add_argument("--port", type=int, default=0,
                        help="TCP port; 0 (the default) picks a free one")
    args = parser.parse_args(argv)

    os.makedirs(args.state, exist_ok=True)
    port_file = os.path.join(args.state, "port")
    if os.path.exists(port_file):
        os.unlink(port_file)
    cert_path, key_path = certs.ensure_certificates(args.state)
    server = BenchServer(args.port, args.reply, read_file(args.default))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_path, key_path)
    server.socket = context.wrap_socket(server.socket, server_side=True,
                                        do_handshake_on_connect=False)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

    with open(port_file + ".tmp", "w", encoding="ascii") as f:
        f.write("%d\n" % server.server_address[1])
    os.replace(port_file + ".tmp", port_file)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
