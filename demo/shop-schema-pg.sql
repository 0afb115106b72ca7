-- The partitioning example's PostgreSQL tables (conf.d/partitions.conf, bind sa_main).
-- db.bind `schema:` runs this once at start-up; it must be safe to run again.
CREATE TABLE IF NOT EXISTS users (
    id bigserial PRIMARY KEY,
    name text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS orders (
    id bigserial PRIMARY KEY,
    user_id bigint NOT NULL REFERENCES users (id),
    item text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
