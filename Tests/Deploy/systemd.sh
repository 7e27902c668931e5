#!/usr/bin/env bash
# The systemd unit files in Cluster/systemd:
#   1. `systemd-analyze verify` accepts both units with not one warning, in a root holding the units, the
#      binary at their ExecStart path and the system's own units;
#   2. `systemd-analyze security --offline` rates each one's exposure 2.0 or lower ("OK"), and each has what a
#      service needs: restart on failure, the user `cairn`, state and cache directories;
#   3. the sysusers.d file makes the system user `cairn` (systemd-sysusers --root);
#   4. the ExecStart lines, expanded the way systemd expands them from the unit's Environment= and the example
#      env files (the paths under /var moved into a temporary directory: no systemd runs here), start a
#      coordinator and a worker that joins it; started again with the same env file (as Restart= would, the
#      token now spent), the worker joins again with the key it kept.
set -euo pipefail
cd "$(dirname "$0")/../.."
. Tests/Deploy/lib.sh
command -v systemd-analyze >/dev/null || fail "systemd-analyze is missing (Scripts/setup --test installs systemd)"
[ -x "$cairn_binary" ] || fail "no $cairn_binary (swift build -c release)"
units=(cairn-coordinator.service cairn-worker.service)

work=$(mktemp -d /tmp/cairn-systemd.XXXXXX)
pids=()
cleanup() {
    set +e
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ "${CAIRN_KEEP_TEST_DIR:-}" = 1 ]; then echo "  kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

# --- 1. verify ------------------------------------------------------------------------------------------
root="$work/root"
mkdir -p "$root/usr/lib/systemd" "$root/etc/systemd/system" "$root/usr/local/bin" "$root/usr/lib/sysusers.d"
cp -a /lib/systemd/system "$root/usr/lib/systemd/"
cp Cluster/systemd/*.service "$root/etc/systemd/system/"
cp Cluster/systemd/cairn.sysusers "$root/usr/lib/sysusers.d/cairn.conf"
ln "$cairn_binary" "$root/usr/local/bin/cairn" 2>/dev/null || cp "$cairn_binary" "$root/usr/local/bin/cairn"
out=$(systemd-analyze verify --root="$root" "${units[@]}" 2>&1) || fail "systemd-analyze verify failed: $out"
[ -z "$out" ] || fail "systemd-analyze verify warns: $out"
pass "systemd-analyze verify: ${units[*]} without a warning"

# --- 2. security, and what a service needs ----------------------------------------------------------------
for unit in "${units[@]}"; do
    report=$(systemd-analyze security --offline=true --root="$root" "$unit" 2>&1 | tail -1)
    exposure=$(echo "$report" | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
    [ -n "$exposure" ] || fail "no exposure level for $unit: $report"
    python3 -c "import sys; sys.exit(0 if float('$exposure') <= 2.0 else 1)" ||
        fail "$unit's exposure is $exposure, above 2.0: $(systemd-analyze security --offline=true --root="$root" "$unit" | grep ✗)"
    for line in "Restart=on-failure" "User=cairn" "Group=cairn" "StateDirectory=cairn/" "CacheDirectory=cairn" \
        "NoNewPrivileges=yes" "ProtectSystem=strict" "CapabilityBoundingSet=$"; do
        grep -q "^$line" "Cluster/systemd/$unit" || fail "$unit has no $line"
    done
    pass "$unit: exposure $exposure (systemd-analyze security), restarts on failure, runs as cairn with state and cache directories"
done

# --- 3. the user -----------------------------------------------------------------------------------------
mkdir -p "$root/etc"
touch "$root/etc/passwd" "$root/etc/group"
systemd-sysusers --root="$root" >/dev/null 2>&1 || fail "systemd-sysusers rejected cairn.sysusers"
entry=$(grep '^cairn:' "$root/etc/passwd") || fail "systemd-sysusers made no user cairn"
uid=$(echo "$entry" | cut -d: -f3)
[ "$uid" -lt 1000 ] && [ "$(echo "$entry" | cut -d: -f6)" = /var/lib/cairn ] ||
    fail "the user cairn is not a system user with home /var/lib/cairn: $entry"
pass "systemd-sysusers makes the system user cairn (uid $uid, home /var/lib/cairn)"

# --- 4. the ExecStart lines, run ---------------------------------------------------------------------------
# Prints the ExecStart of unit $1 as one argument per line, expanded as systemd does: ${NAME} is the variable's
# value as is, a lone $NAME its value split at white space; variables from Environment= and the env file $2.
exec_start() {
    python3 - "$1" "$2" "$work" "$cairn_binary" <<'PY'
import re, shlex, sys
unit, env_file, work, binary = sys.argv[1:]
env, argv = {}, None
for line in open(unit):
    line = line.strip()
    if line.startswith("Environment="):
        k, _, v = line[len("Environment="):].partition("=")
        env[k] = v
    elif line.startswith("ExecStart="):
        argv = shlex.split(line[len("ExecStart="):])
for line in open(env_file):
    line = line.strip()
    if line and not line.startswith("#"):
        k, _, v = line.partition("=")
        env[k] = v
out = []
for word in argv:
    m = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", word)
    if m:
        out += env.get(m.group(1), "").split()
    else:
        out.append(re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda m: env.get(m.group(1), ""), word))
out = [binary if w == "/usr/local/bin/cairn" else w.replace("/var/", work + "/var/") for w in out]
print("\n".join(out))
PY
}
port=$(free_port)
sed "s|^CAIRN_COORDINATOR_ARGS=.*|CAIRN_COORDINATOR_ARGS=--listen tcp://127.0.0.1:$port --http off|" \
    Cluster/systemd/coordinator.env >"$work/coordinator.env"
mapfile -t coordinator < <(exec_start Cluster/systemd/cairn-coordinator.service "$work/coordinator.env")
mkdir -p "$work/var/lib/cairn/coordinator" "$work/var/lib/cairn/worker" "$work/var/cache/cairn"
"${coordinator[@]}" >"$work/coordinator.log" 2>&1 &
pids+=($!)
state="$work/var/lib/cairn/coordinator"
token=$("$cairn_binary" coordinator token --state "$state" 2>/dev/null)
sed -e "s|^CAIRN_COORDINATOR=.*|CAIRN_COORDINATOR=tcp://127.0.0.1:$port|" \
    -e "s|^CAIRN_WORKER_ARGS=.*|CAIRN_WORKER_ARGS=--token $token --threads 1 --name unit-worker|" \
    Cluster/systemd/worker.env >"$work/worker.env"
mapfile -t worker < <(exec_start Cluster/systemd/cairn-worker.service "$work/worker.env")
for start in first second; do
    "${worker[@]}" </dev/null >"$work/worker-$start.log" 2>&1 &
    worker_pid=$!
    pids+=($worker_pid)
    "$cairn_binary" workers --state "$state" --wait 1 --timeout 60s >/dev/null 2>&1 ||
        fail "the worker's ExecStart did not join ($start start): $(tail -3 "$work/worker-$start.log")"
    kill -TERM "$worker_pid"
    wait "$worker_pid" || fail "the worker did not stop cleanly on SIGTERM ($start start)"
    # The coordinator notices the worker left before the next start.
    gone() { ! "$cairn_binary" workers --state "$state" --json | grep -q '"connected":true'; }
    wait_until 30 "the worker to be seen leaving" gone
done
check "the worker kept its key pair in its state directory" test -s "$work/var/lib/cairn/worker/worker.json"
grep -q "already enrolled" "$work/worker-second.log" || fail "the second start did not reuse the kept key"
pass "the units' ExecStart lines run a coordinator and a worker; the worker, restarted with its spent token, rejoins with its kept key"
