#!/usr/bin/env bash
# Cluster/slurm/cairn.sbatch on a one-node Slurm that this test brings up itself, as root: its own munged (own
# key and socket) and slurmctld + slurmd (own configuration, spool and ports; proctrack/linuxproc, no cgroups),
# all stopped at the end. Debian's slurm-wlm and munge (Scripts/setup --test) provide them.
#   1. A tiny job through `sbatch --wait`: it succeeds, OUTDIR/adapter and adapter.gguf hold the adapter of its
#      last step (the lineage says so), and no coordinator or worker process is left.
#   2. A longer job, cancelled with `scancel` once some steps are journaled: the batch script stops cleanly and
#      OUTDIR/adapter is the adapter of the last journaled step (its lineage's steps = the journal's step,
#      short of the total). The same sbatch command resumes it, and is stopped the way a time limit stops it
#      (USR1 to the batch shell, as the script's --signal=B:USR1@120 asks): the adapter of the new last step is
#      kept. A third allocation resumes the job and finishes it.
set -euo pipefail
cd "$(dirname "$0")/../.."
. Tests/Deploy/lib.sh
for tool in munged slurmctld slurmd sbatch scancel squeue sinfo; do
    command -v $tool >/dev/null || fail "$tool is missing (Scripts/setup --test installs slurm-wlm and munge)"
done
[ -x "$cairn_binary" ] || fail "no $cairn_binary (swift build -c release)"

work=$(mktemp -d /tmp/cairn-slurm.XXXXXX)
chmod 0755 "$work"
stop_daemons() {
    set +e
    for pidfile in "$work"/slurmd.pid "$work"/slurmctld.pid "$work"/munged.pid; do
        [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
    done
    # The daemons' own leftovers (a step that outlived the test) go too; they are all under $work.
    pkill -f -- "--state $work/" 2>/dev/null || true
    for pidfile in "$work"/slurmd.pid "$work"/slurmctld.pid "$work"/munged.pid; do
        for _ in $(seq 50); do
            [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null || break
            sleep 0.1
        done
    done
    if [ "${CAIRN_KEEP_TEST_DIR:-}" = 1 ]; then echo "  kept $work"; else rm -rf "$work"; fi
}
trap stop_daemons EXIT

# --- munge: its own key and socket ---------------------------------------------------------------------
mkdir -m 0700 "$work/munge"
dd if=/dev/urandom of="$work/munge/munge.key" bs=1024 count=1 status=none
chmod 0600 "$work/munge/munge.key"
socket="$work/munge/munge.socket"
munged --force --key-file "$work/munge/munge.key" --socket "$socket" --pid-file "$work/munged.pid" \
    --log-file "$work/munge/munged.log" --seed-file "$work/munge/munged.seed"
wait_until 10 "munged's socket" test -S "$socket"

# --- Slurm: one node (this host), two CPUs -------------------------------------------------------------
node=$(hostname -s)
mkdir -p "$work/ctld" "$work/spool" "$work/jobs"
export SLURM_CONF="$work/slurm.conf"
cat >"$SLURM_CONF" <<EOF
ClusterName=cairntest
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$socket
StateSaveLocation=$work/ctld
SlurmdSpoolDir=$work/spool
SlurmctldPidFile=$work/slurmctld.pid
SlurmdPidFile=$work/slurmd.pid
SlurmctldLogFile=$work/slurmctld.log
SlurmdLogFile=$work/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
MpiDefault=none
KillWait=30
NodeName=$node NodeAddr=127.0.0.1 CPUs=2 State=UNKNOWN
PartitionName=cairn Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF"
wait_until 60 "the node to be idle (sinfo)" bash -c "sinfo -h -o %T | grep -qx idle"
note "Slurm up: node $node, $(sinfo -h -o '%c CPUs, partition %P')"

# --- The job: the tiny model over a few lines ----------------------------------------------------------
model="$PWD/Tests/Fixtures/tiny-llama/a.gguf"
for i in $(seq 40); do echo "{\"text\": \"pebble $i on the cairn, stone $((i * 7 % 13)) below\"}"; done >"$work/jobs/data.jsonl"
write_job() { # write_job NAME STEPS
    cat >"$work/jobs/$1.yaml" <<EOF
model: $model
data: data.jsonl
rank: 4
steps: $2
seq_len: 16
batch_size: 2
learning_rate: 0.01
seed: 7
EOF
}
lineage_steps() { "$cairn_binary" lineage "$1" --model "$model" --json | python3 -c 'import json, sys; print(json.load(sys.stdin)["steps"])'; }
sbatch_script="$PWD/Cluster/slurm/cairn.sbatch"
export CAIRN="$cairn_binary" CAIRN_HOME="$work/home"
# Workers reach the coordinator by the host's name, as on a real cluster, when that name resolves here.
if ! getent hosts "$(hostname)" >/dev/null; then
    note "$(hostname) does not resolve here: the workers use CAIRN_HOST=127.0.0.1"
    export CAIRN_HOST=127.0.0.1
fi

# 1. A whole job.
write_job short 6
out="$work/out-short"
set +e
(cd "$work/jobs" && sbatch --wait --ntasks=2 --output="$work/short-%j.log" "$sbatch_script" short.yaml "$out")
rc=$?
set -e
log=$(cat "$work"/short-*.log)
[ $rc -eq 0 ] || fail "sbatch --wait returned $rc; the batch log:
$log"
check "the PEFT adapter is in OUTDIR/adapter" test -f "$out/adapter/adapter_model.safetensors"
check "the GGUF adapter is in OUTDIR/adapter.gguf" test -s "$out/adapter.gguf"
steps=$(lineage_steps "$out/adapter")
[ "$steps" = 6 ] || fail "the adapter's lineage says $steps steps, not 6"
[ "$(lineage_steps "$out/adapter.gguf")" = 6 ] || fail "the GGUF adapter's lineage is not of 6 steps"
echo "$log" | grep -q "done:" || fail "the batch log does not say the job is done:
$log"
if pgrep -f -- "--state $out/state" >/dev/null || pgrep -f "worker join tcp://$node" >/dev/null; then
    fail "a coordinator or worker outlived the allocation: $(pgrep -af cairn)"
fi
pass "sbatch --wait ran a 6-step job on a coordinator and a worker; the adapter (PEFT and GGUF) has 6 steps"

# 2. Stopped midway twice, the way a cancel and a time limit stop it, then resumed to the end.
write_job long 300
out="$work/out-long"
journal_step() { # the job's last journaled step, read from the coordinator's database (0 before there is one)
    python3 - "$out/state/cairn.sqlite" <<'PY'
import os, sqlite3, sys
row = None
if os.path.exists(sys.argv[1]):
    db = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True, timeout=10)
    row = db.execute("SELECT step FROM jobs WHERE id = 'job-1'").fetchone()
print(row[0] if row else 0)
PY
}
# stop_midway HOW AFTER: starts an allocation on the long job, stops it once the journal is past step AFTER
# (HOW: scancel as is, or the time limit's USR1 to the batch shell, as --signal=B:USR1@120 sends it), and checks
# that OUTDIR/adapter is then the adapter of the journal's last step. Prints that step.
stop_midway() {
    local how=$1 after=$2 id kept journal log
    id=$(cd "$work/jobs" && sbatch --parsable --ntasks=2 --output="$work/long-%j.log" "$sbatch_script" long.yaml "$out")
    past() { [ "$(journal_step)" -ge $((after + 3)) ]; }
    wait_until 120 "the long job to journal step $((after + 3))" past
    case $how in
        scancel) scancel "$id" ;;
        time-limit) scancel --batch --signal=USR1 "$id" ;;
    esac
    allocation_ended() { ! squeue -h -j "$id" 2>/dev/null | grep -q .; }
    wait_until 90 "the stopped allocation ($how) to end" allocation_ended
    log=$(cat "$work"/long-"$id".log)
    check "OUTDIR/adapter exists after the stop ($how)" test -f "$out/adapter/adapter_model.safetensors"
    kept=$(lineage_steps "$out/adapter")
    journal=$(journal_step)
    [ "$kept" = "$journal" ] || fail "$how: the kept adapter has $kept steps, the journal's last step is $journal"
    [ "$kept" -gt "$after" ] && [ "$kept" -lt 300 ] || fail "$how: the kept adapter has $kept steps"
    echo "$log" | grep -q "last journaled step" || fail "$how: the batch log does not say what was kept:
$log"
    if [ "$how" = time-limit ]; then
        echo "$log" | grep -q "SIGUSR1: stopping" || fail "the batch script did not see the USR1:
$log"
    fi
    if pgrep -f -- "--state $out/state" >/dev/null; then fail "$how: the coordinator outlived its allocation"; fi
    echo "$kept"
}
first=$(stop_midway scancel 0)
pass "scancel after $first journaled steps: OUTDIR/adapter is step $first's adapter; nothing left running"
second=$(stop_midway time-limit "$first")
grep -q "job-1 running from step $first of 300" "$(ls -t "$work"/long-*.log | head -1)" ||
    fail "the second allocation did not resume job-1 from step $first"
pass "resumed from step $first, stopped by the time limit's USR1 at step $second: its adapter kept"

set +e
(cd "$work/jobs" && sbatch --wait --ntasks=2 --output="$work/resume-%j.log" "$sbatch_script" long.yaml "$out")
rc=$?
set -e
log=$(cat "$work"/resume-*.log)
[ $rc -eq 0 ] || fail "the resumed allocation returned $rc:
$log"
echo "$log" | grep -q "resuming job-1" || fail "the third allocation did not resume job-1:
$log"
[ "$(lineage_steps "$out/adapter")" = 300 ] || fail "after resuming, the adapter is not of 300 steps"
pass "the same sbatch command resumed job-1 from step $second and finished its 300 steps"
