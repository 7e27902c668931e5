# Sourced by the deploy tests (Tests/Deploy/*.sh): checks that fail loudly, bounded waits, free ports.
# Each test is a bash script run as root by Scripts/test; it prints "PASS name" or "FAIL name: why" and exits
# non-zero on the first failure, after its cleanup trap has stopped everything it started.

test_name=$(basename "$0" .sh)
# A command that fails outside the checks still says where.
set -E
trap 'echo "FAIL $test_name: line $LINENO: \`$BASH_COMMAND\` failed" >&2' ERR
pass() { echo "PASS $test_name: $*"; }
fail() {
    echo "FAIL $test_name: $*" >&2
    exit 1
}
check() { # check DESCRIPTION COMMAND...: runs the command; fails the test with DESCRIPTION if it fails.
    local what=$1
    shift
    "$@" || fail "$what (command: $*)"
}
note() { echo "  $test_name: $*"; }

# wait_until SECONDS DESCRIPTION COMMAND...: polls the command every 0.2 s until it succeeds; fails the test
# after SECONDS.
wait_until() {
    local limit=$1 what=$2 deadline
    shift 2
    deadline=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || fail "timed out after ${limit}s waiting for: $what"
        sleep 0.2
    done
}

# A TCP port nothing listens on now (the kernel's choice).
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

[ "$(id -u)" = 0 ] || { echo "SKIP $test_name: needs root"; exit 0; }
cairn_binary=${CAIRN_BINARY:-$PWD/.build/release/cairn}
