# Sourced by scripts/run, scripts/test and scripts/fuzz: installs the Debian packages h2o-db needs
# when some are missing (apt-get; through sudo when not root), and runs build steps so that a
# failing one prints its output and what to do.
H2O_DB_BUILD_PACKAGES="gcc pkg-config python3 meson ninja-build openssl libh2o-dev libuv1-dev libyaml-dev libssl-dev libpq-dev libsqlite3-dev libmruby-dev libmariadb-dev"
H2O_DB_TEST_PACKAGES="check libcurl4-openssl-dev curl openssl postgresql mariadb-server chromium memcached pgbouncer wrk nghttp2-client"
# scripts/fuzz: clang and its libFuzzer/sanitizer runtimes
H2O_DB_FUZZ_PACKAGES="clang libclang-rt-dev"

# h2o_db_step WHAT HINT COMMAND...: runs COMMAND with its output kept in a log; on failure prints
# the log, then "h2o-db: WHAT failed" and HINT, and returns COMMAND's status.
h2o_db_step() {
    what=$1
    hint=$2
    shift 2
    log=$(mktemp /tmp/h2o-db-step-XXXXXX)
    if "$@" >"$log" 2>&1; then
        rm -f "$log"
        return 0
    else
        status=$?
    fi
    cat "$log" >&2
    rm -f "$log"
    echo "h2o-db: $what failed (exit status $status): $*" >&2
    [ -n "$hint" ] && echo "h2o-db: $hint" >&2
    return $status
}

h2o_db_install_packages() {
    missing=""
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
    done
    [ -z "$missing" ] && return 0
    echo "h2o-db: installing Debian packages:$missing"
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        if ! command -v sudo >/dev/null 2>&1; then
            echo "h2o-db: these Debian packages are missing:$missing" >&2
            echo "h2o-db: install them as root (apt-get install$missing), or install sudo, and run this again" >&2
            return 1
        fi
        sudo="sudo"
    fi
    # the services these packages carry are not started here: the tests start their own
    h2o_db_step "apt-get update" "check the machine's apt sources and network, then run this again" \
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq || return 1
    h2o_db_step "installing the Debian packages$missing" "install them by hand (apt-get install$missing) and run this again" \
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing || return 1
}
