#!/bin/sh
# The mdhunt demo: run the shipped ZohoAssist rule twice against a fake
# Microsoft cloud on this machine, show the diff, and mail the report to a
# local SMTP server.
#
# Usage: scripts/demo.sh   (or: make demo)
#
# Installs the Debian packages it needs (scripts/install-deps.sh, through
# sudo when not root), builds build/mdhunt, starts tests/fake/fakecloud.py
# and tests/smtp/smtpserver.py on 127.0.0.1 in a temporary directory, and
# stops them again when it exits.  The mailed report is saved as
# demo-out/report.eml and its HTML part as demo-out/report.html.  Set
# MDHUNT_DEMO_KEEP=1 to keep the temporary directory (configuration,
# store, logs) for a look afterwards.
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=/usr/bin/python3
OUT="$ROOT/demo-out"
# Seconds to wait for a server to start.
START_LIMIT=30

WORK=""
FAKE_PID=""
SMTP_PID=""

step() {
    printf '\n== %s\n\n' "$*"
}

fail() {
    echo "demo: $*" >&2
    exit 1
}

cleanup() {
    status=$?
    for pid in $SMTP_PID $FAKE_PID; do
        if kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
    if [ -n "$WORK" ] && [ -d "$WORK" ]; then
        if [ "${MDHUNT_DEMO_KEEP:-0}" = 1 ]; then
            echo "demo: kept the temporary files in $WORK"
        else
            rm -rf "$WORK"
        fi
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Wait until file exists and is not empty, while process pid runs.
wait_for_file() {
    file=$1
    pid=$2
    what=$3
    tries=0
    while [ ! -s "$file" ]; do
        kill -0 "$pid" 2>/dev/null ||
            fail "$what exited at start; see $WORK/$what.log"
        tries=$((tries + 1))
        [ "$tries" -le $((START_LIMIT * 10)) ] ||
            fail "$what did not start within $START_LIMIT s"
        sleep 0.1
    done
}

# Write the fake cloud's state: the identities of its default state and
# the devices the ZohoAssist rule returns.  "first" has three devices,
# "second" loses the first of them and gains two new ones.
write_dataset() {
    "$PYTHON" - "$WORK/fake" "$1" <<'EOF'
import datetime
import hashlib
import os
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.getcwd(), "tests", "fake"))
import fakestate  # noqa: E402

state_dir, phase = sys.argv[1], sys.argv[2]
now = datetime.datetime.now(datetime.timezone.utc)


def row(name, days_ago, hours, reports):
    first = now - datetime.timedelta(days=days_ago)
    last = first + datetime.timedelta(hours=hours)
    # Defender device ids are 40 hex digits; these derive from the name.
    device_id = hashlib.sha1(name.encode("ascii")).hexdigest()
    return [device_id, name, first.strftime("%Y-%m-%dT%H:%M:%S.0000000Z"),
            last.strftime("%Y-%m-%dT%H:%M:%S.0000000Z"), reports,
            3 * len(reports)]


known = [
    row("fin-ws-017.contoso.local", 4, 30, [100231, 100877]),
    row("hr-lt-203.contoso.local", 3, 12, [101554]),
    row("it-adm-001.contoso.local", 2, 20, [102101, 102650, 103012]),
]
gained = [
    row("sales-lt-448.contoso.local", 1, 2, [104470]),
    row("dev-ws-092.contoso.local", 0.2, 1, [104982, 105003]),
]
rows = known if phase == "first" else known[1:] + gained

state = fakestate.default_state()
state["datasets"]["zoho"] = {
    "columns": [["DeviceId", "string"], ["DeviceName", "string"],
                ["FirstSeen", "datetime"], ["LastSeen", "datetime"],
                ["Report", "dynamic"], ["Count", "long"]],
    "rows": rows,
}
state["default_dataset"] = "zoho"
os.makedirs(state_dir, exist_ok=True)
fakestate.write_json_atomic(os.path.join(state_dir, fakestate.STATE_FILE),
                            state)
EOF
}

# Print a value of the fake's default state (TENANT_ID, CLIENT_ID,
# SECRET).
fake_value() {
    "$PYTHON" -B -c "import sys; sys.path.insert(0, 'tests/fake');
import fakestate; print(fakestate.$1)"
}

cd "$ROOT"

step "1/7 Installing the packages mdhunt needs (Debian 12)"
sh scripts/install-deps.sh

step "2/7 Building build/mdhunt"
make --no-print-directory
MDHUNT="$ROOT/build/mdhunt"

step "3/7 Starting a fake Microsoft cloud and a mail server on 127.0.0.1"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/mdhunt-demo.XXXXXX")
mkdir -p "$WORK/fake" "$WORK/smtp"
write_dataset first
"$PYTHON" tests/fake/fakecloud.py --state "$WORK/fake" \
    >"$WORK/fakecloud.log" 2>&1 &
FAKE_PID=$!
SMTP_PASSWORD=$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
"$PYTHON" tests/smtp/smtpserver.py --port-file "$WORK/smtp/port" \
    --ca-file "$WORK/smtp/ca.pem" --save-dir "$WORK/smtp/received" \
    --user demo --password "$SMTP_PASSWORD" --lifetime 900 \
    >"$WORK/smtpserver.log" 2>&1 &
SMTP_PID=$!
wait_for_file "$WORK/fake/port" "$FAKE_PID" fakecloud
wait_for_file "$WORK/smtp/port" "$SMTP_PID" smtpserver
FAKE_URL="https://127.0.0.1:$(cat "$WORK/fake/port")"
SMTP_URL="smtp://127.0.0.1:$(tr -d '\n' <"$WORK/smtp/port")"
echo "fake cloud (Entra ID, Graph):  $FAKE_URL"
echo "mail server (STARTTLS, AUTH):  $SMTP_URL"

umask 077
fake_value SECRET >"$WORK/client-secret"
printf '%s\n' "$SMTP_PASSWORD" >"$WORK/smtp-password"
umask 022
cat >"$WORK/mdhunt.ini" <<EOF
; Written by scripts/demo.sh for the fake cloud and the local mail server.
[auth]
tenant_id = $(fake_value TENANT_ID)
client_id = $(fake_value CLIENT_ID)
client_secret_file = $WORK/client-secret
authority_url = $FAKE_URL

[api]
backend = graph
url = $FAKE_URL
ca_file = $WORK/fake/ca.pem

[rules]
path = $ROOT/config/rules/rmm-zohoassist-file-signature.yaml

[store]
path = $WORK/mdhunt.db

[mail]
smtp_url = $SMTP_URL
username = demo
password_file = $WORK/smtp-password
ca_file = $WORK/smtp/ca.pem
from = mdhunt-demo@example.com
to = soc@example.com
send_when = new
EOF
echo "configuration:                 $WORK/mdhunt.ini"

step "4/7 First run: the rule's first result is the baseline"
"$MDHUNT" -c "$WORK/mdhunt.ini" run --once

step "5/7 The fake's devices change: two new ones, one gone"
write_dataset second
echo "sales-lt-448.contoso.local and dev-ws-092.contoso.local appear;"
echo "fin-ws-017.contoso.local is no longer in the result."

step "6/7 Second run (--all: the rule runs daily, so it is not due yet)"
"$MDHUNT" -c "$WORK/mdhunt.ini" run --once --all

step "7/7 The diff of the second run"
"$MDHUNT" -c "$WORK/mdhunt.ini" diff

# The second message is the report of the second run; the first one is
# the baseline.
REPORT=$(ls "$WORK/smtp/received/"*.eml 2>/dev/null | tail -n 1)
[ -n "$REPORT" ] || fail "the mail server received no message; see" \
    "$WORK/smtpserver.log"
mkdir -p "$OUT"
cp "$REPORT" "$OUT/report.eml"
"$PYTHON" - "$OUT/report.eml" "$OUT/report.html" <<'EOF'
import email
import email.policy
import sys

with open(sys.argv[1], "rb") as f:
    message = email.message_from_binary_file(f, policy=email.policy.default)
html = message.get_body(("html",))
if html is None:
    sys.exit("demo: %s has no HTML part" % sys.argv[1])
with open(sys.argv[2], "w", encoding="utf-8") as f:
    f.write(html.get_content())
EOF

step "Done"
echo "The mail server received $(ls "$WORK/smtp/received/"*.eml | wc -l)" \
    "messages: the baseline and the report of the second run."
echo "  report as sent (RFC 5322):  $OUT/report.eml"
echo "  its HTML part:              $OUT/report.html"
echo "Open the .html in a browser: the two new devices link to their pages"
echo "in the Defender portal (they exist only in this fake tenant)."
echo "The fake cloud and the mail server are stopped now."
