#!/usr/bin/python3
"""Write the seed corpora of the fuzz harnesses into tests/fuzz/corpus/.

Run from the project root: /usr/bin/python3 tests/fuzz/make-seeds.py

The seeds come from the checked-in fixtures (tests/data/replies, the rule
corpus, the example configuration) and from the literal values below.
Harnesses that read structured input (api_error, token, retry_after,
output, report) get their leading choice bytes here, in the layout that
each harness's header comment describes.  Existing seed files are
replaced; seeds that this script no longer writes are left in place.
"""

import json
import os
import shutil
import struct
import sys

CORPUS = "tests/fuzz/corpus"
REPLIES = "tests/data/replies"
RULES = "tests/data/corpus/rules"


def write(target, name, data):
    directory = os.path.join(CORPUS, target)
    os.makedirs(directory, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    with open(os.path.join(directory, name), "wb") as f:
        f.write(data)


def read(path):
    with open(path, "rb") as f:
        return f.read()


def replies(prefix):
    for name in sorted(os.listdir(REPLIES)):
        if name.startswith(prefix):
            yield name, read(os.path.join(REPLIES, name))


def status_of(name):
    """HTTP status written in a reply fixture's name, e.g. graph_429."""
    for part in name.split(".")[0].split("_"):
        if part.isdigit() and len(part) == 3:
            return int(part)
    return 500


def seeds_replies():
    for name, body in replies("graph_"):
        write("graph", name, body)
    for name, body in replies("defender_"):
        write("defender", name, body)
    write("graph", "not_json.html", read(os.path.join(REPLIES,
                                                      "not_json.html")))

    # api_error: backend, status (2 bytes), Retry-After / 60 (255: none),
    # header use bits, request-id header NUL, body.
    for prefix, kind in (("graph_", 0), ("defender_", 1)):
        for name, body in replies(prefix):
            status = status_of(name)
            if status == 500 and "500" not in name:
                continue
            head = struct.pack(">BHBB", kind, status, 1 if status == 429
                               else 255, 3)
            write("api_error", name, head + b"req-0001\0" + body)
    write("api_error", "empty_body_502", struct.pack(">BHBB", 0, 502, 255,
                                                     0) + b"\0")

    # token: status byte (400 + byte), then the body.
    for name, body in replies("token_"):
        status = status_of(name) if "error" in name else 400
        if "unavailable" in name:
            status = 503
        write("token", name, bytes([(status - 400) % 200]) + body)


def seeds_rules():
    for name in sorted(os.listdir(RULES)):
        shutil.copyfile(os.path.join(RULES, name),
                        os.path.join(CORPUS, "rule", name))
    write("rule", "plain.kql",
          "#kql\nDeviceProcessEvents\n| where FileName =~ \"x.exe\"\n")


def seeds_config():
    write("config", "example.ini", read("config/mdhunt.ini.example"))
    write("config", "minimal.ini",
          "[auth]\n"
          "tenant_id = contoso.onmicrosoft.com\n"
          "client_id = 00000000-0000-0000-0000-000000000001\n"
          "client_secret = sEcReT-value-1234\n")
    write("config", "full.ini",
          "\ufeff[auth]\r\n"
          "tenant_id = 11111111-2222-3333-4444-555555555555\r\n"
          "client_id = 00000000-0000-0000-0000-000000000001\r\n"
          "client_secret_file = /etc/mdhunt/secret\r\n"
          "[api]\r\nbackend = defender\r\nurl = https://127.0.0.1:8443\r\n"
          "max_reply_size = 64M\r\ntimeout = 30\r\n"
          "[rules]\r\npath = /etc/mdhunt/rules, ./rules\r\n"
          "[store]\r\npath = /tmp/x.db\r\nkeep_runs = 5\r\n"
          "keep_days = 7d\r\n"
          "[schedule]\r\ndefault_frequency = 1h\r\njitter = 5m\r\n"
          "[report]\r\nrealert_after = 30d\r\nfirst_run = report\r\n"
          "[mail]\r\nsmtp_url = smtps://127.0.0.1:465\r\n"
          "from = \"mdhunt\" <mdhunt@example.com>\r\n"
          "to = a@example.com, b@example.com\r\nsend_when = always\r\n"
          "[rule \"0a1b2c3d-0000-4000-8000-000000000001\"]\r\n"
          "key = DeviceId, DeviceName\r\ntrack = SHA256\r\n")
    write("config", "bad_secret.ini",
          "[auth]\nclient_secret = \"sEcReT\" ; comment\n"
          "client_secret = again\n[nope]\nx\n")


def seeds_la():
    # la: status byte (below 128: 200, 128: 204, 129 + n: 400 + n), body.
    for name, body in replies("la_"):
        status = status_of(name)
        if "_" not in name[3:6] and name[3:6].isdigit():
            choice = 129 + status - 400
        else:
            choice = 0
        write("la", name, bytes([choice]) + body)
    write("la", "no_content", bytes([128]))


def seeds_exclusions():
    # The example file with its entries uncommented, and every condition
    # kind with the values YAML can spell.
    lines = read("config/exclusions.yaml.example").decode().splitlines()
    text = "\n".join(line[1:] if line.startswith(("#-", "#  "))
                     else line for line in lines)
    write("exclusions", "example.yaml", text + "\n")
    write("exclusions", "kinds.yaml",
          "- id: kinds\n"
          "  rule: \"*\"\n"
          "  reason: every kind\n"
          "  owner: soc@example.org\n"
          "  created: 2024-12-01\n"
          "  expires: 2025-06-30T18:00:00Z\n"
          "  DeviceName: [\u00c9cole, \u03a3\u03c3, \"a,b\"]\n"
          "  FolderPath: {glob: 'C:\\Windows\\*\\[a-z]?.exe'}\n"
          "  Signer: {regex: '(Zoho|Micro(soft)?) (Corp|Inc)\\.?'}\n"
          "  SHA256: {exact: ABC}\n"
          "- id: KINDS2\n"
          "  rule: rule-1\n"
          "  reason: r\n"
          "  owner: o\n"
          "  expires: 2025-01-01\n"
          "  Tags: {glob: '*'}\n")
    write("exclusions", "empty.yaml", "# nothing yet\n")


def seeds_text():
    now = struct.pack(">I", 1700000000)
    for i, value in enumerate(["120", "0", "2147483647", "2147483648",
                               "Wed, 21 Oct 2015 07:28:00 GMT",
                               "Sun, 06 Nov 2039 08:49:37 GMT",
                               "Mon, 30 Feb 2026 25:61:61 GMT", "-1", ""]):
        write("retry_after", "value%d" % i, now + value.encode())
    for i, value in enumerate(["2024-01-31T12:34:56.1234567Z",
                               "2024-02-29T00:00:00Z",
                               "1969-12-31T23:59:59.999999999+01:00",
                               "0000-01-01T00:00:00-23:59",
                               "9999-12-31T23:59:60z",
                               "2024-01-31t12:34:56.1+05:30"]):
        write("time", "ts%d" % i, value)
    for i, value in enumerate(["5m", "14d", "1h", "30s", "0s",
                               "36525d", "1.02:03:04", "00:05:00",
                               "36500.23:59:59", "1H", "-5m"]):
        write("duration", "d%d" % i, value)


def seeds_output():
    # options, columns - 1, one type byte per column, then JSON rows.
    # Type bytes index fuzz_output_types: 0 String, 1 Int64, 2 Double,
    # 3 Boolean, 4 DateTime, 5 TimeSpan, 6 Guid, 7 Dynamic.
    rows = [["Timestamp", "DeviceName", "Count", "Score", "Signed",
             "Age", "Id", "Extra"],
            ["2024-01-31T12:34:56.1234567Z", "host\u202e1\u0000\x1b[2J",
             42, 0.1, True, "1.02:03:04.5",
             "0a1b2c3d-0000-4000-8000-000000000001",
             {"a": [1, "=cmd|' /C calc'!A0"]}],
            [None, "=HYPERLINK(\"x\")", "-7", "NaN", "false",
             "-00:00:01", "", "[1,2]"],
            ["2024-01-31T12:34:56Z", "\u00e9\u4e2d\U0001F600,\"\r\n",
             9223372036854775807, 1e300, 1, "00:00:00", None, None]]
    head = bytes([0x05, 7, 4, 0, 1, 2, 3, 5, 6, 7])
    write("output", "all_types.json",
          head + json.dumps(rows, ensure_ascii=False).encode())
    write("output", "one_column.json",
          bytes([0, 0, 0]) + b'[["a"],[""],[null],["x,y"]]')


def cstrings(*values):
    return b"".join(v.encode("utf-8") + b"\0" for v in values)


def seeds_report():
    # See fuzz_report.c: counts, options and the strings of one digest.
    def rule(rule_id, name):
        return (cstrings(rule_id, name, "High", "Persistence",
                         "CommandAndControl")
                + bytes([2])
                + cstrings("T1219", "T1566.001")
                + bytes([2])
                + cstrings("graph", "ab" * 32, "throttled",
                           "HTTP 429 <b>slow</b>\r\nBcc: x@y")
                + struct.pack(">IIII", 100, 3700, 3000, 50)
                + bytes([12, 30, 1, 10, 4, 1, 2, 3]))

    def hit(index, change, name, value):
        return (bytes([index, change])
                + cstrings("dev-%d" % index, name, "old\u202ename")
                + struct.pack(">III", 10, 20, 30)
                + bytes([2])
                + cstrings("FileName", value, "=SUM(A1)", ""))

    head = bytes([1, 3, 1, 20]) + cstrings("[mdhunt]\r\nX-Evil: 1")
    body = (head + struct.pack(">I", 4000) + cstrings("contoso\u00e9.com")
            + rule("0a1b2c3d-0000-4000-8000-000000000001",
                   "RMM <script>alert(1)</script>")
            + rule("rule-2", "")
            + hit(0, 0, "host\x1b]0;pwned\x07", "a\"b,c")
            + hit(1, 2, "\u00e9" * 80, "-2+3")
            + hit(0, 3, "", "javascript:alert(1)")
            + struct.pack(">III", 1, 2, 2))
    write("report", "hostile.bin", body)
    write("report", "empty.bin", bytes([0, 0, 0, 0]) + cstrings("", "t"))


def main():
    if not os.path.isdir(REPLIES):
        sys.exit("make-seeds: run from the project root")
    os.makedirs(os.path.join(CORPUS, "rule"), exist_ok=True)
    seeds_replies()
    seeds_rules()
    seeds_config()
    seeds_la()
    seeds_exclusions()
    seeds_text()
    seeds_output()
    seeds_report()


if __name__ == "__main__":
    main()
