-- The partitioning example's SQLite table (conf.d/partitions.conf, bind sa_audit):
-- audit_log lives here, routed by `binds: {audit_log: sa_audit}` on sa_main.
CREATE TABLE IF NOT EXISTS audit_log (
    id INTEGER PRIMARY KEY,
    at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    action TEXT NOT NULL,
    username TEXT NOT NULL,
    detail TEXT NOT NULL
);
