#!/usr/bin/python3
"""Peer: one hunt written the way Microsoft's Python samples do it.

MSAL gets an app-only token, requests posts the query to Microsoft Graph
runHuntingQuery, and sqlite3 keeps every device each rule has returned.
Prints the DeviceIds the rule has never returned before (one a line,
sorted) and records every device of the result.

Settings come from the environment, as for hunt.sh: TENANT_ID,
CLIENT_ID, CLIENT_SECRET_FILE, LOGIN_URL, GRAPH_URL, CA_FILE, RULE_ID,
QUERY_FILE and DB (a SQLite file holding the table of schema.sql).
"""

import datetime
import os
import sqlite3
import sys

import msal
import requests

GRAPH_SCOPE = "https://graph.microsoft.com/.default"
TIMEOUT = 200


def get_token(env):
    with open(env["CLIENT_SECRET_FILE"], encoding="utf-8") as f:
        secret = f.read().rstrip("\r\n")
    app = msal.ConfidentialClientApplication(
        env["CLIENT_ID"], client_credential=secret,
        authority="%s/%s" % (env["LOGIN_URL"], env["TENANT_ID"]),
        # Instance discovery sends a request about the authority host to
        # login.microsoftonline.com, and this authority is on loopback.
        instance_discovery=False, verify=env["CA_FILE"])
    result = app.acquire_token_for_client(scopes=[GRAPH_SCOPE])
    if "access_token" not in result:
        raise SystemExit("token request failed: %s: %s"
                         % (result.get("error"),
                            result.get("error_description")))
    return result["access_token"]


def run_query(env, token):
    with open(env["QUERY_FILE"], encoding="utf-8") as f:
        query = f.read()
    reply = requests.post(
        env["GRAPH_URL"] + "/v1.0/security/runHuntingQuery",
        headers={"Authorization": "Bearer " + token},
        json={"Query": query}, verify=env["CA_FILE"], timeout=TIMEOUT)
    reply.raise_for_status()
    return reply.json()["results"]


def record(env, rows):
    """Store the devices and return the DeviceIds new to the rule."""
    rule_id = env["RULE_ID"]
    now = datetime.datetime.now(datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ")
    db = sqlite3.connect(env["DB"])
    try:
        known = {device_id for (device_id,) in db.execute(
            "SELECT device_id FROM device WHERE rule_id = ?", (rule_id,))}
        new = sorted({r["DeviceId"] for r in rows} - known)
        with db:
            db.executemany(
                "INSERT INTO device (rule_id, device_id, device_name,"
                " first_seen, last_seen) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (rule_id, device_id) DO UPDATE"
                " SET device_name = excluded.device_name,"
                " last_seen = excluded.last_seen",
                ((rule_id, r["DeviceId"], r["DeviceName"], now, now)
                 for r in rows))
    finally:
        db.close()
    return new


def main():
    env = os.environ
    rows = run_query(env, get_token(env))
    new = record(env, rows)
    sys.stdout.write("".join(device_id + "\n" for device_id in new))
    return 0


if __name__ == "__main__":
    sys.exit(main())
