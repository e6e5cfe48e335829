#!/usr/bin/python3
"""A fake Microsoft cloud for mdhunt's tests: Entra ID, Graph, Defender.

Usage: /usr/bin/python3 tests/fake/fakecloud.py --state DIR [--port N]

Serves HTTPS on 127.0.0.1 only (port 0 picks a free port), writes the port
to DIR/port and the CA certificate to trust to DIR/ca.pem.  Endpoints:

  POST /{tenant}/oauth2/v2.0/token        Entra ID v2 (and v1 without v2.0)
  GET  /{tenant}/v2.0/.well-known/openid-configuration
                                          Entra ID discovery (for MSAL)
  POST /v1.0/security/runHuntingQuery     Microsoft Graph
  POST /api/advancedhunting/run           Defender XDR advanced hunting
  POST /v1/workspaces/{id}/query          Log Analytics (Sentinel)

The fake is strict: it rejects what the real services reject, with their
status and error body.  Tests control it through DIR/fake.json (see
fakestate.py) and read every request it received from DIR/requests.jsonl.

A fault in fake.json changes the replies of matching requests.  Keys:
  endpoint       "token", "graph", "defender" or "loganalytics";
                 absent matches all
  count          how many requests it applies to; absent means all
  delay          seconds to wait before the reply is sent
  status         reply status; with "error" ({"code", "message"}, for the
                 token endpoint also "error" and an AADSTS "code") the body
                 is that service's error envelope; with "body" (JSON) or
                 "body_text" (with "content_type") it is sent as given
  headers        extra reply headers, e.g. {"Retry-After": "2"}
  empty          reply with an empty body (status default 200)
  truncate       send the normal reply with a Content-Length larger than
                 the bytes sent, then close the connection
  drop           close the connection without a reply
  reset          send the start of a reply, then reset the connection
                 (TCP RST)
  expire_token   expire the request's access token, then handle the
                 request as usual, so the reply is a 401
  token          changes to tokens issued by the request: {"lifetime": s,
                 "expires_in_string": true, "expired_on_issue": true}
  on_calls       apply only to these requests, numbered from 1 per
                 endpoint (of all endpoints when endpoint is absent)
Only the first fault that matches and has requests left applies.
Discovery requests are never faulted.
"""

import argparse
import base64
import datetime
import json
import os
import signal
import socket
import ssl
import struct
import sys
import threading
import traceback
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Keep __pycache__ out of the source tree.
sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import certs  # noqa: E402
from entra import (assertion_for_log, handle_discovery,  # noqa: E402
                   handle_token, match_discovery_path, match_token_path,
                   parse_form_for_log)
from fakestate import StateError, StateStore, TokenStore  # noqa: E402
from hunting import handle_defender, handle_graph  # noqa: E402
from loganalytics import (handle_loganalytics,  # noqa: E402
                          match_workspace_path)
from replies import Reply, Request, json_reply, service_error  # noqa: E402

HOST = "127.0.0.1"
PORT_FILE = "port"
REQUESTS_FILE = "requests.jsonl"
MAX_BODY = 16 * 1024 * 1024
# Seconds a connection may sit idle, or in the TLS handshake.
SOCKET_TIMEOUT = 60


def classify(path, options):
    """Return the endpoint name for a request path, or None."""
    if match_discovery_path(path) is not None:
        return "discovery"
    token = match_token_path(path)
    if token is not None:
        if token[1] or options.get("v1_token_endpoint", True):
            return "token"
        return None
    lowered = path.lower()
    if lowered == "/v1.0/security/runhuntingquery":
        return "graph"
    if lowered == "/api/advancedhunting/run":
        return "defender"
    if match_workspace_path(path) is not None:
        return "loganalytics"
    return None


class RequestLog:
    """STATE/requests.jsonl: one JSON object per request received."""

    def __init__(self, state_dir, tokens):
        self.path = os.path.join(state_dir, REQUESTS_FILE)
        self.tokens = tokens
        self._lock = threading.Lock()
        self._seq = 0

    def _headers(self, headers):
        result = {}
        for name, value in headers.items():
            name = name.lower()
            if name == "authorization":
                value = self._authorization(value)
            if name in result:
                value = result[name] + ", " + value
            result[name] = value
        return result

    def _authorization(self, value):
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "bearer":
            return scheme + " <redacted>"
        record = self.tokens.lookup(token.strip())
        if record is None:
            return "Bearer <unknown token>"
        return "Bearer " + record["id"]

    def append(self, request, status, fault):
        entry = {
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "endpoint": request.endpoint,
            "method": request.method,
            "path": request.path,
            "query": request.query,
            "headers": self._headers(request.headers),
            "body_length": len(request.body),
            "status": status,
            "fault": fault.get("id") if fault else None,
        }
        if request.endpoint == "token":
            # A token request body contains the client secret: keep only
            # the form fields, with the secret redacted.
            entry["form"] = parse_form_for_log(request.body)
            entry["assertion"] = assertion_for_log(request.body)
            entry["issued_token"] = request.issued_token
        else:
            entry["body_b64"] = base64.b64encode(request.body).decode()
        with self._lock:
            self._seq += 1
            entry["seq"] = self._seq
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(entry, ensure_ascii=False) + "\n")


def fault_reply(request, fault):
    """Build the reply a fault replaces the normal one with, or None."""
    headers = list((fault.get("headers") or {}).items())
    if fault.get("empty"):
        return Reply(int(fault.get("status", 200)), b"", headers,
                     fault.get("content_type"))
    if "body_text" in fault:
        return Reply(int(fault.get("status", 200)),
                     fault["body_text"].encode("utf-8"), headers,
                     fault.get("content_type", "text/html"))
    if "body" in fault:
        return json_reply(int(fault.get("status", 200)), fault["body"],
                          headers)
    if "error" in fault:
        return service_error(request, int(fault.get("status", 500)),
                             fault["error"], headers)
    if "status" in fault:
        return Reply(int(fault["status"]), b"", headers)
    return None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "mdhunt-fakecloud"
    timeout = SOCKET_TIMEOUT

    def setup(self):
        # The handshake runs here, in the connection's own thread, so
        # that a client that never completes it cannot stall the server.
        self.request.settimeout(SOCKET_TIMEOUT)
        self.request.do_handshake()
        super().setup()

    def version_string(self):
        return self.server_version

    def log_message(self, fmt, *args):
        # requests.jsonl records every request; keep stderr for problems.
        pass

    def do_GET(self):
        self._handle()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = do_GET

    def _read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length = self.headers.get("Content-Length")
        if length is None:
            return b""
        length = int(length)
        if length < 0 or length > MAX_BODY:
            raise ValueError("Content-Length %d out of range" % length)
        return self.rfile.read(length)

    def _read_chunked(self):
        body = bytearray()
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip(), 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return bytes(body)
            if len(body) + size > MAX_BODY:
                raise ValueError("chunked body over %d bytes" % MAX_BODY)
            body += self.rfile.read(size)
            self.rfile.readline()

    def _handle(self):
        server = self.server
        try:
            body = self._read_body()
        except ValueError as e:
            print("fakecloud: %s %s: unreadable body: %s"
                  % (self.command, self.path, e), file=sys.stderr, flush=True)
            self._send(Reply(400, str(e).encode(), [], "text/plain"))
            self.close_connection = True
            return

        url = urllib.parse.urlsplit(self.path)
        try:
            state = server.store.load()
        except StateError as e:
            print("fakecloud: %s" % e, file=sys.stderr, flush=True)
            self._send(Reply(500, ("fakecloud: invalid state: %s\n" % e)
                             .encode(), [], "text/plain"))
            return

        endpoint = classify(url.path, state["options"])
        request = Request(self.command, url.path, url.query, self.headers,
                          body, endpoint)
        fault = (server.store.take_fault(state, endpoint)
                 if endpoint and endpoint != "discovery" else None)
        if fault and fault.get("expire_token"):
            _, _, token = request.headers.get("Authorization",
                                              "").partition(" ")
            server.tokens.expire(token.strip())
        try:
            reply = self._reply(request, state, fault)
        except StateError as e:
            print("fakecloud: %s" % e, file=sys.stderr, flush=True)
            reply = Reply(500, ("fakecloud: invalid state: %s\n" % e)
                          .encode(), [], "text/plain")

        # Log before replying: a client may exit, and its test read the
        # log, as soon as the reply arrives.
        dropped = bool(fault and (fault.get("drop") or fault.get("reset")))
        server.log.append(request, None if dropped else reply.status, fault)

        if fault and fault.get("delay"):
            threading.Event().wait(float(fault["delay"]))
        if fault and fault.get("reset"):
            # Start the reply, so that the client cannot take the reset
            # for a stale kept-alive connection and resend the request on
            # its own (libcurl does), then reset: with linger 0, close()
            # sends a TCP RST instead of a FIN.
            try:
                self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: "
                                 b"4096\r\n\r\n{\"")
                self.wfile.flush()
            except (ConnectionError, ssl.SSLError, socket.timeout):
                pass
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
        if dropped:
            self.close_connection = True
            return
        self._send(reply, truncate=bool(fault and fault.get("truncate")))

    def _reply(self, request, state, fault):
        if fault is not None:
            reply = fault_reply(request, fault)
            if reply is not None:
                return reply
        if request.endpoint == "token":
            reply, record = handle_token(request, state, self.server.tokens,
                                         fault)
            request.issued_token = record["id"] if record else None
            return reply
        if request.endpoint == "discovery":
            return handle_discovery(request, state)
        if request.endpoint == "graph":
            return handle_graph(request, state, self.server.tokens)
        if request.endpoint == "defender":
            return handle_defender(request, state, self.server.tokens)
        if request.endpoint == "loganalytics":
            return handle_loganalytics(request, state, self.server.tokens)
        return json_reply(404, {"error": {
            "code": "NotFound",
            "message": "fakecloud: no endpoint at %s" % request.path}})

    def _send(self, reply, truncate=False):
        body = reply.body if self.command != "HEAD" else b""
        length = len(body)
        if truncate:
            # Promise more bytes than are sent, then close: the client
            # sees a connection closed in the middle of the body.
            length = len(body) + 1024
            body = body[:len(body) // 2]
            self.close_connection = True
        try:
            self.send_response(reply.status)
            for name, value in reply.headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(length))
            if truncate:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
        except (ConnectionError, ssl.SSLError, socket.timeout):
            # The client gave up first, e.g. after its own timeout.
            self.close_connection = True


class FakeCloudServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port, state_dir):
        super().__init__((HOST, port), Handler)
        address = self.socket.getsockname()[0]
        if address != HOST:
            raise SystemExit("fakecloud: bound to %s, not loopback %s"
                             % (address, HOST))
        self.store = StateStore(state_dir)
        self.tokens = TokenStore()
        self.log = RequestLog(state_dir, self.tokens)

    def handle_error(self, request, client_address):
        kind, value, _ = sys.exc_info()
        if issubclass(kind, (ssl.SSLError, ConnectionError, socket.timeout)):
            # Expected in tests: a client that does not trust the CA
            # aborts the handshake.
            print("fakecloud: connection from %s:%d: %s"
                  % (client_address[0], client_address[1], value),
                  file=sys.stderr, flush=True)
            return
        traceback.print_exc(file=sys.stderr)


def _write_port(state_dir, port):
    path = os.path.join(state_dir, PORT_FILE)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="ascii") as f:
        f.write("%d\n" % port)
    os.replace(tmp, path)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Fake Entra ID, Graph and Defender for mdhunt's tests. "
                    "Listens on %s only." % HOST)
    parser.add_argument("--state", required=True,
                        help="state directory (created when missing)")
    parser.add_argument("--port", type=int, default=0,
                        help="TCP port; 0 (the default) picks a free one")
    args = parser.parse_args(argv)

    os.makedirs(args.state, exist_ok=True)
    try:
        os.unlink(os.path.join(args.state, PORT_FILE))
    except FileNotFoundError:
        pass
    cert_path, key_path = certs.ensure_certificates(args.state)
    server = FakeCloudServer(args.port, args.state)
    server.store.ensure_file()

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_path, key_path)
    server.socket = context.wrap_socket(server.socket, server_side=True,
                                        do_handshake_on_connect=False)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    port = server.server_address[1]
    _write_port(args.state, port)
    print("fakecloud: listening on https://%s:%d, state in %s"
          % (HOST, port, args.state), file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        try:
            os.unlink(os.path.join(args.state, PORT_FILE))
        except FileNotFoundError:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
