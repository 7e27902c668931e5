#!/usr/bin/env bash
# The portable tarball (Scripts/package) in a fresh Debian root without the toolchain: debootstrap --variant=minbase
# with only the packages the tarball's DEPENDS names. In that root (chroot, as root):
#   1. `cairn --version` prints the version;
#   2. a short single-machine training on the tiny model runs, and its adapter is byte for byte the one the same
#      command makes on this machine;
#   3. `cairn worker join` enrols with a coordinator running outside the root and trains a job to its end.
# The root is cached by DEPENDS and mirror in $CAIRN_HOME/deploy-test (a rerun skips debootstrap).
set -euo pipefail
cd "$(dirname "$0")/../.."
. Tests/Deploy/lib.sh
command -v debootstrap >/dev/null || fail "debootstrap is missing (Scripts/setup --test installs it)"

work=$(mktemp -d /tmp/cairn-package.XXXXXX)
root="$work/root"
coordinator_pid=
worker_pid=
cleanup() {
    set +e
    [ -n "$worker_pid" ] && kill "$worker_pid" 2>/dev/null
    [ -n "$coordinator_pid" ] && kill "$coordinator_pid" 2>/dev/null
    wait 2>/dev/null
    mountpoint -q "$root/proc" 2>/dev/null && umount "$root/proc"
    if [ "${CAIRN_KEEP_TEST_DIR:-}" = 1 ]; then echo "  kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

# --- The tarball ---------------------------------------------------------------------------------------
Scripts/package --output "$work/dist" | tee "$work/package.log"
tarball=$(ls "$work"/dist/cairn-*.tar.gz)
name=$(basename "$tarball" .tar.gz)
tar -xzf "$tarball" -C "$work"
for f in cairn DEPENDS README.txt licenses/NOTICES.txt licenses/swift.txt deploy/systemd/cairn-worker.service \
    deploy/systemd/cairn-coordinator.service deploy/slurm/cairn.sbatch; do
    check "the tarball holds $name/$f" test -s "$work/$name/$f"
done
packages=$(grep -v '^#' "$work/$name/DEPENDS" | sort | paste -sd ' ')
[ "$packages" = "libopenblas0 libzmq5" ] || fail "DEPENDS lists '$packages', not libopenblas0 libzmq5"
note "tarball $(basename "$tarball"): $(($(stat -c %s "$tarball") / 1048576)) MiB; needs $packages"

# --- A fresh root: minbase plus DEPENDS, nothing else ------------------------------------------------------
# The Debian archive this machine's apt already uses: deb822 sources first, then the one-line format.
mirror=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | sed -n 's/^URIs: *\(http[^ ]*debian\/\{0,1\}\)$/\1/p' | head -1)
[ -n "$mirror" ] || mirror=$(sed -n 's/^deb  *\(\[[^]]*\]  *\)\{0,1\}\(http[^ ]*debian\/\{0,1\}\)  *bookworm .*/\2/p' \
    /etc/apt/sources.list 2>/dev/null | head -1)
[ -n "$mirror" ] || fail "no Debian archive in this machine's apt sources (/etc/apt/sources.list.d/*.sources or
  /etc/apt/sources.list) for debootstrap to use; add the one apt should use, then rerun"
cache="${CAIRN_HOME:-$HOME/.cache/cairn}/deploy-test"
key=$(echo "bookworm minbase $packages $mirror" | sha256sum | cut -c1-16)
base="$cache/root-$key.tar"
if [ ! -f "$base" ]; then
    note "debootstrap --variant=minbase bookworm from $mirror, with $packages (about a minute; cached after)"
    mkdir -p "$cache"
    debootstrap --variant=minbase --include="${packages// /,}" bookworm "$root" "$mirror" >"$work/debootstrap.log" 2>&1 ||
        fail "debootstrap failed: $(tail -5 "$work/debootstrap.log")"
    rm -rf "$root"/var/cache/apt/archives/*.deb
    tar -cf "$base.partial" -C "$root" . && mv "$base.partial" "$base"
else
    note "fresh root from the cache ($base)"
    mkdir -p "$root" && tar -xf "$base" -C "$root"
fi
in_root() { chroot "$root" "$@"; }
for p in $packages; do
    in_root dpkg-query -W -f='${Status}' "$p" | grep -q "install ok installed" || fail "$p is not installed in the root"
done
if in_root dpkg-query -W -f='${Status}' libsqlite3-0 2>/dev/null | grep -q "install ok installed"; then
    fail "libsqlite3-0 is in the root: the test would not show that cairn runs without it"
fi
if in_root sh -c 'command -v swift' >/dev/null || [ -n "$(find "$root" -name 'libswiftCore*' -print -quit)" ]; then
    fail "the root has a Swift toolchain or runtime"
fi
mount -t proc proc "$root/proc"
mkdir -p "$root/opt/cairn" "$root/work"
cp -a "$work/$name/cairn" "$root/opt/cairn/cairn"

# --- 1. --version ---------------------------------------------------------------------------------------
version=$(in_root /opt/cairn/cairn --version) || fail "cairn --version failed in the fresh root"
[ "$version" = "$("$cairn_binary" --version)" ] || fail "cairn --version says '$version' in the root"
pass "cairn --version in a minbase root with only $packages: $version"

# --- 2. A short training, in the root and here ---------------------------------------------------------
cp Tests/Fixtures/tiny-llama/a.gguf "$root/work/model.gguf"
for i in $(seq 24); do echo "{\"text\": \"stone $i sits on stone $((i * 5 % 11)) of the cairn\"}"; done >"$root/work/data.jsonl"
train=(train --model /work/model.gguf --data /work/data.jsonl --steps 8 --batch 2 --seq-len 16 --rank 4 --lr 0.01
    --seed 3)
in_root env HOME=/work /opt/cairn/cairn "${train[@]}" --output /work/run </dev/null >"$work/train.log" 2>&1 ||
    fail "training in the fresh root failed: $(tail -5 "$work/train.log")"
here=("${train[@]}")
here=("${here[@]//\/work\//$root/work/}")
HOME="$work" "$cairn_binary" "${here[@]}" --output "$work/run-here" </dev/null >"$work/train-here.log" 2>&1 ||
    fail "the same training on this machine failed: $(tail -5 "$work/train-here.log")"
check "the root's run has its adapter" test -s "$root/work/run/adapter_model.safetensors"
steps=$(grep -c '"step"' "$root/work/run/metrics.jsonl" || true)
[ "$steps" -ge 8 ] || fail "the root's run logged $steps steps, not 8"
cmp -s "$root/work/run/adapter_model.safetensors" "$work/run-here/adapter_model.safetensors" ||
    fail "the adapter trained in the root differs from the one trained here"
pass "cairn train ran 8 steps in the root; its adapter is byte for byte the one trained here"

# --- 3. A worker in the root, the coordinator here -------------------------------------------------------
port=$(free_port)
"$cairn_binary" coordinator serve --state "$work/state" --listen "tcp://127.0.0.1:$port" --http off \
    >"$work/coordinator.log" 2>&1 &
coordinator_pid=$!
token=$("$cairn_binary" coordinator token --state "$work/state" 2>/dev/null)
# chroot itself (not the in_root function, whose subshell would take the signal) so that $! is the worker.
chroot "$root" env HOME=/work /opt/cairn/cairn worker join "tcp://127.0.0.1:$port" --token "$token" --name fresh-root \
    --threads 1 --credentials /work/worker.json --cache /work/cache </dev/null >"$work/worker.log" 2>&1 &
worker_pid=$!
"$cairn_binary" workers --state "$work/state" --wait 1 --timeout 60s >/dev/null 2>&1 ||
    fail "the worker in the root did not connect: $(tail -5 "$work/worker.log")"
cat >"$work/job.yaml" <<EOF
model: $root/work/model.gguf
data: $root/work/data.jsonl
rank: 4
steps: 5
seq_len: 16
batch_size: 2
learning_rate: 0.01
EOF
job=$("$cairn_binary" submit --state "$work/state" "$work/job.yaml")
timeout 120 "$cairn_binary" status --state "$work/state" "$job" --watch >/dev/null ||
    fail "$job did not finish: $(tail -5 "$work/coordinator.log"; tail -5 "$work/worker.log")"
"$cairn_binary" pull --state "$work/state" "$job" -o "$work/pulled" 2>/dev/null
check "the cluster job's adapter was pulled" test -s "$work/pulled/adapter_model.safetensors"
grep -q "fresh-root" "$work/coordinator.log" || fail "the coordinator never saw the worker fresh-root"
kill -TERM "$worker_pid"
wait "$worker_pid" || fail "the worker in the root did not stop cleanly on SIGTERM: $(tail -3 "$work/worker.log")"
worker_pid=
pass "cairn worker join in the root enrolled, trained $job's 5 steps with the coordinator here, and left on SIGTERM"
