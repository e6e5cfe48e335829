#!/bin/sh
# Peer: one hunt as a SOC engineer would script it with curl, jq and
# sqlite3.  Gets a token from Entra ID, runs a query through Microsoft
# Graph runHuntingQuery, prints the DeviceIds the rule has never returned
# before (one a line, sorted) and records every device of the result.
#
# Settings come from the environment:
#   TENANT_ID, CLIENT_ID, CLIENT_SECRET_FILE   the app registration
#   LOGIN_URL   e.g. https://login.microsoftonline.com
#   GRAPH_URL   e.g. https://graph.microsoft.com
#   CA_FILE     CA bundle to trust
#   RULE_ID     the rule the devices belong to
#   QUERY_FILE  the KQL to run
#   DB          SQLite file holding the table of schema.sql
set -eu

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
umask 077

curl -sS --fail-with-body --cacert "$CA_FILE" \
    --data-urlencode grant_type=client_credentials \
    --data-urlencode "client_id=$CLIENT_ID" \
    --data-urlencode "client_secret@$CLIENT_SECRET_FILE" \
    --data-urlencode "scope=https://graph.microsoft.com/.default" \
    -o "$tmp/token.json" "$LOGIN_URL/$TENANT_ID/oauth2/v2.0/token"
printf 'Authorization: Bearer %s\n' "$(jq -er .access_token "$tmp/token.json")" \
    > "$tmp/auth"

jq -n --rawfile q "$QUERY_FILE" '{Query: $q}' > "$tmp/request.json"
curl -sS --fail-with-body --cacert "$CA_FILE" -H @"$tmp/auth" \
    -H 'Content-Type: application/json' --data-binary @"$tmp/request.json" \
    -o "$tmp/reply.json" "$GRAPH_URL/v1.0/security/runHuntingQuery"

jq -r '.results[] | [.DeviceId, .DeviceName] | @csv' "$tmp/reply.json" \
    > "$tmp/rows.csv"

now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
sqlite3 -batch "$DB" <<SQL
.bail on
BEGIN;
CREATE TEMP TABLE result (device_id TEXT, device_name TEXT);
.import --csv --schema temp $tmp/rows.csv result
SELECT device_id FROM temp.result r WHERE NOT EXISTS
    (SELECT 1 FROM device d WHERE d.rule_id = '$RULE_ID'
     AND d.device_id = r.device_id)
    ORDER BY device_id;
INSERT INTO device (rule_id, device_id, device_name, first_seen, last_seen)
    SELECT '$RULE_ID', device_id, device_name, '$now', '$now'
    FROM temp.result WHERE true
    ON CONFLICT (rule_id, device_id) DO UPDATE
    SET device_name = excluded.device_name, last_seen = excluded.last_seen;
COMMIT;
SQL
