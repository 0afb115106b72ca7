# Sourced by scripts/test (and bench/): starts the database servers the tests talk to, in a
# temporary folder, on loopback and a unix socket only, and stops them on exit.
#   h2o_db_start_postgres   sets H2O_DB_TEST_PG, H2O_DB_TEST_PG2 (URLs of two databases), and
#                           H2O_DB_TEST_PG_RESTARTABLE with H2O_DB_TEST_PG_CTL/PGDATA/PG_LOG
#                           (another cluster, which the fault tests stop and start)
#   h2o_db_start_pgbouncer  sets H2O_DB_TEST_PGBOUNCER (the URL of h2o_test through a PgBouncer in
#                           transaction pooling mode in front of the shared cluster) and
#                           H2O_DB_TEST_PGBOUNCER_PORT (its admin console: dbname=pgbouncer)
#   h2o_db_start_mariadb    sets H2O_DB_TEST_MYSQL (a user with a password) and H2O_DB_TEST_MYSQL_CTL
#   h2o_db_start_pg_standby sets H2O_DB_TEST_PG_STANDBY_PORT and H2O_DB_TEST_PG_STANDBY_PGDATA: a streaming
#                           standby of the shared cluster (the replica tests stop, start and pause it)
#   h2o_db_stop_servers

h2o_db_free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null ||
        echo $((20000 + $$ % 20000))
}

h2o_db_as_postgres() {
    if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# h2o_db_pg_cluster NAME: initdb, configure and start a cluster in $H2O_DB_SERVERS_DIR/NAME on a
# free loopback port (socket in the same folder); sets pgbin, pgdata, pgport.
h2o_db_pg_cluster() {
    pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
    pgdata="$H2O_DB_SERVERS_DIR/$1"
    mkdir -p "$pgdata"
    [ "$(id -u)" -eq 0 ] && chown postgres "$pgdata"
    h2o_db_as_postgres "$pgbin/initdb" -D "$pgdata" -U postgres -A trust -E UTF8 --no-locale >/dev/null || return 1
    pgport=$(h2o_db_free_port)
    cat >> "$pgdata/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $pgport
unix_socket_directories = '$H2O_DB_SERVERS_DIR'
max_connections = 500
max_prepared_transactions = 64
fsync = off
synchronous_commit = off
full_page_writes = off
shared_buffers = 128MB
log_min_messages = warning
CONF
    h2o_db_as_postgres "$pgbin/pg_ctl" -D "$pgdata" -l "$H2O_DB_SERVERS_DIR/$1.log" -w start >/dev/null || {
        cat "$H2O_DB_SERVERS_DIR/$1.log" >&2
        return 1
    }
}

# Two clusters: the shared one, which every suite uses at the same time (the harness gives each
# suite databases of its own in it), and a restartable one for the suite that stops and restarts
# PostgreSQL (faults), so that the others never see it go down.
h2o_db_start_postgres() {
    # exported: the harness reserves the ports it hands out in $H2O_DB_SERVERS_DIR/ports
    export H2O_DB_SERVERS_DIR=$(mktemp -d /tmp/h2o-db-servers-XXXXXX)
    chmod 755 "$H2O_DB_SERVERS_DIR"
    [ "$(id -u)" -eq 0 ] && chown postgres "$H2O_DB_SERVERS_DIR"
    h2o_db_pg_cluster pg || return 1
    H2O_DB_PG_BIN=$pgbin
    H2O_DB_PGDATA=$pgdata
    H2O_DB_PG_PORT=$pgport
    "$pgbin/psql" -q -h 127.0.0.1 -p "$pgport" -U postgres -d postgres \
        -c "CREATE DATABASE h2o_test" -c "CREATE DATABASE h2o_test2" >/dev/null || return 1
    export H2O_DB_TEST_PG="postgresql://postgres@127.0.0.1:$pgport/h2o_test"
    export H2O_DB_TEST_PG2="postgresql://postgres@127.0.0.1:$pgport/h2o_test2"
    export H2O_DB_TEST_PG_SOCKET_DIR="$H2O_DB_SERVERS_DIR" # its socket: .s.PGSQL.PORT there
    echo "h2o-db: PostgreSQL for the tests at $H2O_DB_TEST_PG"

    h2o_db_pg_cluster pg-restartable || return 1
    H2O_DB_PGDATA_RESTARTABLE=$pgdata
    "$pgbin/psql" -q -h 127.0.0.1 -p "$pgport" -U postgres -d postgres -c "CREATE DATABASE h2o_test" >/dev/null || return 1
    export H2O_DB_TEST_PG_RESTARTABLE="postgresql://postgres@127.0.0.1:$pgport/h2o_test"
    # for the fault tests, which stop and restart that server
    export H2O_DB_TEST_PG_CTL="$pgbin/pg_ctl"
    export H2O_DB_TEST_PGDATA="$pgdata"
    export H2O_DB_TEST_PG_LOG="$H2O_DB_SERVERS_DIR/pg-restartable.log"
    echo "h2o-db: a restartable PostgreSQL for the fault tests at $H2O_DB_TEST_PG_RESTARTABLE"
}

# A PgBouncer (Debian's pgbouncer) in front of the shared cluster, in transaction pooling mode, on
# a free loopback port: every database name goes to the same name there (`*`), 2 server
# connections per database and user (so that a test can tell which one a statement gets;
# $H2O_DB_PGBOUNCER_POOL_SIZE for another number, as bench/pgbouncer does), trust as the cluster,
# the user postgres may use the admin console. Needs h2o_db_start_postgres first.
h2o_db_start_pgbouncer() {
    bdir="$H2O_DB_SERVERS_DIR/pgbouncer"
    mkdir -p "$bdir"
    H2O_DB_PGBOUNCER_PORT=$(h2o_db_free_port)
    echo '"postgres" ""' >"$bdir/users.txt"
    cat >"$bdir/pgbouncer.ini" <<CONF
[databases]
* = host=127.0.0.1 port=$H2O_DB_PG_PORT
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $H2O_DB_PGBOUNCER_PORT
unix_socket_dir =
auth_type = trust
auth_file = $bdir/users.txt
admin_users = postgres
pool_mode = transaction
default_pool_size = ${H2O_DB_PGBOUNCER_POOL_SIZE:-2}
max_client_conn = 1000
logfile = $bdir/pgbouncer.log
pidfile = $bdir/pgbouncer.pid
CONF
    [ "$(id -u)" -eq 0 ] && chown -R postgres "$bdir"
    # it refuses to run as root; -d: it daemonizes once it listens
    h2o_db_as_postgres pgbouncer -q -d "$bdir/pgbouncer.ini" || {
        cat "$bdir/pgbouncer.log" >&2
        return 1
    }
    H2O_DB_PGBOUNCER_DIR=$bdir
    for i in $(seq 1 100); do
        "$H2O_DB_PG_BIN/psql" -q -h 127.0.0.1 -p "$H2O_DB_PGBOUNCER_PORT" -U postgres -d h2o_test -c "SELECT 1" >/dev/null 2>&1 && break
        sleep 0.1
    done
    export H2O_DB_TEST_PGBOUNCER="postgresql://postgres@127.0.0.1:$H2O_DB_PGBOUNCER_PORT/h2o_test"
    export H2O_DB_TEST_PGBOUNCER_PORT=$H2O_DB_PGBOUNCER_PORT
    echo "h2o-db: PgBouncer (transaction pooling) for the tests at $H2O_DB_TEST_PGBOUNCER"
}

# A MariaDB of the tests' own: mariadb-install-db into the temporary folder, mariadbd on a free
# loopback port and a socket there (as the `mysql` user when root), a database h2o_test and a
# user with a password (the tests check it is never printed). $H2O_DB_TEST_MYSQL_CTL stop|start
# stops and starts the same server (the fault tests restart it).
h2o_db_start_mariadb() {
    if [ -z "${H2O_DB_SERVERS_DIR:-}" ]; then
        export H2O_DB_SERVERS_DIR=$(mktemp -d /tmp/h2o-db-servers-XXXXXX)
        chmod 755 "$H2O_DB_SERVERS_DIR"
    fi
    mydir="$H2O_DB_SERVERS_DIR/mariadb"
    mkdir -p "$mydir/data"
    run_as=""
    if [ "$(id -u)" -eq 0 ]; then
        chown -R mysql "$mydir"
        run_as="runuser -u mysql --"
    fi
    if ! $run_as mariadb-install-db --no-defaults --datadir="$mydir/data" --auth-root-authentication-method=normal \
        --skip-test-db --skip-name-resolve >"$mydir/install.log" 2>&1; then
        cat "$mydir/install.log" >&2
        return 1
    fi
    H2O_DB_MYSQL_PORT=$(h2o_db_free_port)
    cat >"$mydir/ctl" <<CTL
#!/bin/sh
# stop | start the tests' MariaDB
case "\$1" in
start)
    # a session of its own: whoever runs this (a test's process group) may be killed afterwards
    setsid $run_as /usr/sbin/mariadbd --no-defaults --datadir="$mydir/data" --socket="$mydir/mysqld.sock" \
        --port=$H2O_DB_MYSQL_PORT --bind-address=127.0.0.1 --pid-file="$mydir/mariadbd.pid" \
        --log-error="$mydir/error.log" --skip-name-resolve --skip-log-bin --max-connections=500 \
        --innodb-buffer-pool-size=64M --innodb-flush-log-at-trx-commit=0 --innodb-doublewrite=0 \
        --performance-schema=OFF </dev/null >/dev/null 2>&1 &
    for i in \$(seq 1 300); do
        mariadb-admin --no-defaults -S "$mydir/mysqld.sock" -u root ping >/dev/null 2>&1 && exit 0
        sleep 0.05
    done
    echo "h2o-db: MariaDB did not start; see $mydir/error.log" >&2
    exit 1 ;;
stop)
    [ -f "$mydir/mariadbd.pid" ] || exit 0
    pid=\$(cat "$mydir/mariadbd.pid")
    kill -TERM "\$pid" 2>/dev/null || exit 0
    for i in \$(seq 1 600); do
        kill -0 "\$pid" 2>/dev/null || { rm -f "$mydir/mariadbd.pid"; exit 0; }
        sleep 0.05
    done
    kill -KILL "\$pid" 2>/dev/null
    rm -f "$mydir/mariadbd.pid" ;;
esac
CTL
    chmod 755 "$mydir/ctl"
    "$mydir/ctl" start || return 1
    H2O_DB_MYSQL_DIR=$mydir
    # the password has characters a URL must percent-encode: Zq7:s3cr@t/pw
    mariadb --no-defaults -S "$mydir/mysqld.sock" -u root -e "
        CREATE DATABASE h2o_test CHARACTER SET utf8mb4;
        CREATE USER 'h2o'@'127.0.0.1' IDENTIFIED BY 'Zq7:s3cr@t/pw';
        CREATE USER 'h2o'@'localhost' IDENTIFIED BY 'Zq7:s3cr@t/pw';
        GRANT ALL ON *.* TO 'h2o'@'127.0.0.1';
        GRANT ALL ON *.* TO 'h2o'@'localhost';" || return 1
    export H2O_DB_TEST_MYSQL="mysql://h2o:Zq7%3As3cr%40t%2Fpw@127.0.0.1:$H2O_DB_MYSQL_PORT/h2o_test"
    export H2O_DB_TEST_MYSQL_SOCKET="$mydir/mysqld.sock"
    export H2O_DB_TEST_MYSQL_CTL="$mydir/ctl"
    export H2O_DB_TEST_MYSQL_LOG="$mydir/error.log"
    echo "h2o-db: MariaDB for the tests at mysql://h2o:***@127.0.0.1:$H2O_DB_MYSQL_PORT/h2o_test"
}

# A streaming standby of the shared cluster (after h2o_db_start_postgres): pg_basebackup -R copies
# it (-c fast: a spread checkpoint would make it wait minutes after the CREATE DATABASEs) and
# writes standby.signal and primary_conninfo; it listens on another loopback port and its socket
# is in a folder of its own (the primary's initdb allows local replication connections).
h2o_db_start_pg_standby() {
    sbdata="$H2O_DB_SERVERS_DIR/pg-standby"
    sbsock="$H2O_DB_SERVERS_DIR/pg-standby-socket"
    mkdir -p "$sbsock"
    [ "$(id -u)" -eq 0 ] && chown postgres "$sbsock"
    h2o_db_as_postgres "$H2O_DB_PG_BIN/pg_basebackup" -h 127.0.0.1 -p "$H2O_DB_PG_PORT" -U postgres -D "$sbdata" -R -X stream -c fast \
        >"$H2O_DB_SERVERS_DIR/pg-standby-backup.log" 2>&1 || {
        cat "$H2O_DB_SERVERS_DIR/pg-standby-backup.log" >&2
        return 1
    }
    sbport=$(h2o_db_free_port)
    cat >> "$sbdata/postgresql.conf" <<CONF
port = $sbport
unix_socket_directories = '$sbsock'
hot_standby = on
hot_standby_feedback = on
CONF
    h2o_db_as_postgres "$H2O_DB_PG_BIN/pg_ctl" -D "$sbdata" -l "$H2O_DB_SERVERS_DIR/pg-standby.log" -w start >/dev/null || {
        cat "$H2O_DB_SERVERS_DIR/pg-standby.log" >&2
        return 1
    }
    H2O_DB_PGDATA_STANDBY=$sbdata
    export H2O_DB_TEST_PG_STANDBY_PORT=$sbport
    export H2O_DB_TEST_PG_STANDBY_PGDATA=$sbdata
    export H2O_DB_TEST_PG_STANDBY_LOG="$H2O_DB_SERVERS_DIR/pg-standby.log"
    echo "h2o-db: a streaming standby of it at postgresql://postgres@127.0.0.1:$sbport"
}

h2o_db_stop_servers() {
    if [ -n "${H2O_DB_MYSQL_DIR:-}" ]; then
        "$H2O_DB_MYSQL_DIR/ctl" stop >/dev/null 2>&1 || true
    fi
    H2O_DB_MYSQL_DIR=""
    if [ -n "${H2O_DB_PGBOUNCER_DIR:-}" ] && [ -f "$H2O_DB_PGBOUNCER_DIR/pgbouncer.pid" ]; then
        kill -TERM "$(cat "$H2O_DB_PGBOUNCER_DIR/pgbouncer.pid")" 2>/dev/null || true
    fi
    H2O_DB_PGBOUNCER_DIR=""
    for d in "${H2O_DB_PGDATA_STANDBY:-}" "${H2O_DB_PGDATA:-}" "${H2O_DB_PGDATA_RESTARTABLE:-}"; do
        [ -n "$d" ] && h2o_db_as_postgres "$H2O_DB_PG_BIN/pg_ctl" -D "$d" -m immediate stop >/dev/null 2>&1 || true
    done
    [ -n "${H2O_DB_SERVERS_DIR:-}" ] && rm -rf "$H2O_DB_SERVERS_DIR"
    H2O_DB_PGDATA=""
    H2O_DB_PGDATA_RESTARTABLE=""
    H2O_DB_PGDATA_STANDBY=""
    H2O_DB_SERVERS_DIR=""
}
