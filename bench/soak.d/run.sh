# Sourced by bench/outage and bench/soak: builds what they need, starts the tests' databases
# (scripts/test-servers.sh: a throw-away PostgreSQL and MariaDB on loopback and unix sockets) and
# runs the Python program in a process group of its own; whenever the script ends — normally,
# on an error, on Ctrl-C, SIGTERM or SIGHUP — that whole group (the program, wrk, curl, pg_ctl,
# h2o-db) is killed and the databases are stopped (h2o_db_stop_servers: PostgreSQL and MariaDB
# run in sessions of their own, also when the programs restart them).
#   soakd_run PROGRAM.py ARGS...      (after cd to the repository's root)

soakd_build() {
    # built only when missing: other work may be rebuilding build/ at the same time
    if [ ! -x build/h2o-db ] || [ ! -f build/t/db_handlers.so ]; then
        [ -f build/build.ninja ] || meson setup build -Dtests=enabled >/dev/null || { echo "meson setup build failed" >&2; exit 1; }
        ninja -C build h2o-db t/db_handlers.so >/dev/null || { echo "ninja -C build h2o-db t/db_handlers.so failed" >&2; exit 1; }
    fi
    [ -x build/h2o-db ] && [ -f build/t/db_handlers.so ] || {
        echo "build/h2o-db or build/t/db_handlers.so is missing: meson setup build -Dtests=enabled && ninja -C build" >&2
        exit 1
    }
    for tool in wrk curl python3 mariadb; do
        command -v "$tool" >/dev/null || { echo "$tool is not installed" >&2; exit 1; }
    done
}

soakd_group=""
soakd_work=""
soakd_keep=0

soakd_cleanup() {
    local rc=$?
    set +e # nothing here may end the clean-up early
    trap - EXIT INT TERM HUP
    if [ -n "$soakd_group" ]; then
        kill -TERM -- "-$soakd_group" 2>/dev/null
        for _ in $(seq 1 150); do
            kill -0 -- "-$soakd_group" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL -- "-$soakd_group" 2>/dev/null
        soakd_group=""
    fi
    # servers whose start was interrupted are not known to h2o_db_stop_servers yet: stop whatever
    # runs in this run's own servers folder first
    if [ -n "${H2O_DB_SERVERS_DIR:-}" ] && [ -d "$H2O_DB_SERVERS_DIR" ]; then
        local pgbin d
        pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
        for d in "$H2O_DB_SERVERS_DIR/pg" "$H2O_DB_SERVERS_DIR/pg-restartable"; do
            [ -f "$d/postmaster.pid" ] && h2o_db_as_postgres "$pgbin/pg_ctl" -D "$d" -m immediate stop >/dev/null 2>&1
        done
        [ -x "$H2O_DB_SERVERS_DIR/mariadb/ctl" ] && "$H2O_DB_SERVERS_DIR/mariadb/ctl" stop >/dev/null 2>&1
    fi
    h2o_db_stop_servers >/dev/null 2>&1
    if [ -n "$soakd_work" ]; then
        if [ "$soakd_keep" = 1 ]; then echo "kept: $soakd_work" >&2; else rm -rf "$soakd_work"; fi
    fi
    exit "$rc"
}

soakd_run() {
    local program=$1
    shift
    . scripts/test-servers.sh
    soakd_work=$(mktemp -d /tmp/h2o-db-soak-XXXXXX)
    chmod 755 "$soakd_work"
    trap soakd_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    trap 'exit 129' HUP
    h2o_db_start_postgres >&2 || exit 1
    h2o_db_start_mariadb >&2 || exit 1
    export H2O_DB_PG_BIN H2O_DB_SERVERS_DIR
    # copies: a rebuild of build/ meanwhile does not change what is measured
    mkdir -p "$soakd_work/bin"
    cp build/h2o-db build/t/db_handlers.so "$soakd_work/bin/"
    echo "h2o-db: $(build/h2o-db --version | head -1); repository at $(git log -1 --format='%h %cd' --date=short 2>/dev/null)$(git diff --quiet -- module include 2>/dev/null || echo ', module/ or include/ modified')" >&2
    # a process group of its own (job control on for this one job), so that it can be killed whole
    set -m
    python3 -B "$program" --work "$soakd_work" --binary "$soakd_work/bin/h2o-db" --handlers "$soakd_work/bin/db_handlers.so" "$@" &
    soakd_group=$!
    set +m
    local rc=0
    wait "$soakd_group" || rc=$?
    soakd_group=""
    return $rc
}
