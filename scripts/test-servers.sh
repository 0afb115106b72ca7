# Sourced by scripts/test (and bench/): starts the database servers the tests talk to, in a
# temporary folder, on loopback and a unix socket only, and stops them on exit.
#   h2o_db_start_postgres   sets H2O_DB_TEST_PG, H2O_DB_TEST_PG2 (URLs of two databases)
#   h2o_db_stop_servers

h2o_db_free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null ||
        echo $((20000 + $$ % 20000))
}

h2o_db_as_postgres() {
    if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

h2o_db_start_postgres() {
    pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
    H2O_DB_SERVERS_DIR=$(mktemp -d /tmp/h2o-db-servers-XXXXXX)
    chmod 755 "$H2O_DB_SERVERS_DIR"
    pgdata="$H2O_DB_SERVERS_DIR/pg"
    mkdir -p "$pgdata"
    [ "$(id -u)" -eq 0 ] && chown postgres "$pgdata" "$H2O_DB_SERVERS_DIR"
    h2o_db_as_postgres "$pgbin/initdb" -D "$pgdata" -U postgres -A trust -E UTF8 --no-locale >/dev/null
    H2O_DB_PG_PORT=$(h2o_db_free_port)
    cat >> "$pgdata/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $H2O_DB_PG_PORT
unix_socket_directories = '$H2O_DB_SERVERS_DIR'
max_connections = 500
max_prepared_transactions = 64
fsync = off
synchronous_commit = off
full_page_writes = off
shared_buffers = 128MB
log_min_messages = warning
CONF
    h2o_db_as_postgres "$pgbin/pg_ctl" -D "$pgdata" -l "$H2O_DB_SERVERS_DIR/pg.log" -w start >/dev/null
    H2O_DB_PG_BIN=$pgbin
    H2O_DB_PGDATA=$pgdata
    "$pgbin/psql" -q -h 127.0.0.1 -p "$H2O_DB_PG_PORT" -U postgres -d postgres \
        -c "CREATE DATABASE h2o_test" -c "CREATE DATABASE h2o_test2" >/dev/null
    export H2O_DB_TEST_PG="postgresql://postgres@127.0.0.1:$H2O_DB_PG_PORT/h2o_test"
    export H2O_DB_TEST_PG2="postgresql://postgres@127.0.0.1:$H2O_DB_PG_PORT/h2o_test2"
    # for the fault tests, which restart the server
    export H2O_DB_TEST_PG_CTL="$pgbin/pg_ctl"
    export H2O_DB_TEST_PGDATA="$pgdata"
    export H2O_DB_TEST_PG_LOG="$H2O_DB_SERVERS_DIR/pg.log"
    echo "h2o-db: PostgreSQL for the tests at $H2O_DB_TEST_PG"
}

h2o_db_stop_servers() {
    if [ -n "${H2O_DB_PGDATA:-}" ]; then
        h2o_db_as_postgres "$H2O_DB_PG_BIN/pg_ctl" -D "$H2O_DB_PGDATA" -m immediate stop >/dev/null 2>&1 || true
    fi
    [ -n "${H2O_DB_SERVERS_DIR:-}" ] && rm -rf "$H2O_DB_SERVERS_DIR"
    H2O_DB_PGDATA=""
    H2O_DB_SERVERS_DIR=""
}
