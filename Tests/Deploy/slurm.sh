#!/usr/bin/env bash
# Cluster/slurm/cairn.sbatch on a one-node Slurm that this test brings up itself, as root: its own munged (own
# key and socket) and slurmctld + slurmd (own configuration, spool and ports; proctrack/linuxproc, no cgroups),
# all stopped at the end. Debian's slurm-wlm and munge (Scripts/setup --test) provide them.
#   1. A tiny job through `sbatch --wait`: it succeeds, OUTDIR/adapter and adapter.gguf hold the adapter of its
#      last step (the lineage says so), and no coordinator or worker process is left.
#   2. A longer job, cancelled with `scancel` once some steps are journaled: the batch script stops cleanly and
#      OUTDIR/adapter is the adapter of the last journaled step (its lineage's steps = the journal's step,
#      short of the total). The same sbatch command again resumes that job and finishes it.
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

# 2. Cancelled midway, then resumed by the same command.
write_job long 300
out="$work/out-long"
id=$(cd "$work/jobs" && sbatch --parsable --ntasks=2 --output="$work/long-%j.log" "$sbatch_script" long.yaml "$out")
journaled() { # the job's journaled step, from the coordinator (0 when not yet known)
    "$cairn_binary" status --state "$out/state" job-1 --json 2>/dev/null |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["jobs"][0]["step"])' 2>/dev/null || echo 0
}
three_steps() { [ "$(journaled)" -ge 3 ]; }
wait_until 120 "the long job to journal 3 steps" three_steps
scancel "$id"
allocation_ended() { ! squeue -h -j "$id" 2>/dev/null | grep -q .; }
wait_until 90 "the cancelled allocation to end" allocation_ended
log=$(cat "$work"/long-"$id".log)
check "OUTDIR/adapter exists after the cancel" test -f "$out/adapter/adapter_model.safetensors"
kept=$(lineage_steps "$out/adapter")
journal=$(python3 - "$out/state/cairn.sqlite" <<'PY'
import sqlite3, sys
print(sqlite3.connect(sys.argv[1]).execute("SELECT step FROM jobs WHERE id = 'job-1'").fetchone()[0])
PY
)
[ "$kept" = "$journal" ] || fail "the kept adapter has $kept steps but the journal's last step is $journal"
[ "$kept" -ge 3 ] && [ "$kept" -lt 300 ] || fail "the kept adapter has $kept steps (expected 3 to 299)"
echo "$log" | grep -q "last journaled step" || fail "the batch log does not say what was kept:
$log"
if pgrep -f -- "--state $out/state" >/dev/null; then fail "the coordinator outlived the cancelled allocation"; fi
pass "scancel after $kept journaled steps: OUTDIR/adapter is step $kept's adapter; nothing left running"

set +e
(cd "$work/jobs" && sbatch --wait --ntasks=2 --output="$work/resume-%j.log" "$sbatch_script" long.yaml "$out")
rc=$?
set -e
log=$(cat "$work"/resume-*.log)
[ $rc -eq 0 ] || fail "the resumed allocation returned $rc:
$log"
echo "$log" | grep -q "resuming job-1" || fail "the second allocation did not resume job-1:
$log"
[ "$(lineage_steps "$out/adapter")" = 300 ] || fail "after resuming, the adapter is not of 300 steps"
pass "the same sbatch command resumed job-1 from step $kept and finished its 300 steps"
