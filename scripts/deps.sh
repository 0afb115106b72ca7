# Sourced by scripts/run, scripts/test and scripts/fuzz: installs the Debian packages h2o-db needs
# when some are missing (apt-get; through sudo when not root).
H2O_DB_BUILD_PACKAGES="gcc pkg-config meson ninja-build libh2o-dev libuv1-dev libyaml-dev libssl-dev libpq-dev libsqlite3-dev libmruby-dev libmariadb-dev"
H2O_DB_TEST_PACKAGES="check libcurl4-openssl-dev curl postgresql mariadb-server"
# scripts/fuzz: clang and its libFuzzer/sanitizer runtimes
H2O_DB_FUZZ_PACKAGES="clang libclang-rt-dev"

h2o_db_install_packages() {
    missing=""
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
    done
    [ -z "$missing" ] && return 0
    echo "h2o-db: installing Debian packages:$missing"
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    # the services these packages carry are not started here: the tests start their own
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
}
