-- The store of both peers: every device each rule has returned.
-- Times are UTC, ISO 8601 text.
CREATE TABLE IF NOT EXISTS device (
    rule_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    device_name TEXT,
    first_seen TEXT NOT NULL,
    last_seen TEXT NOT NULL,
    PRIMARY KEY (rule_id, device_id)
);
