#!/usr/bin/env bash
# Run a jtransfer config on every worker of a Cloud TPU VM (one host or a pod slice).
#
#   export TPU=my-v4-32 ZONE=us-central2-b BUCKET=my-bucket
#   scripts/launch_tpu.sh setup                   # every worker: code, Python (uv), venv
#   scripts/launch_tpu.sh run RUN CONFIG [--config.key=value ...]
#   scripts/launch_tpu.sh logs RUN                # follow worker 0's output
#   scripts/launch_tpu.sh stop RUN                # SIGTERM: every worker saves, exits; waits
#   scripts/launch_tpu.sh --dry-run COMMAND ...   # print the commands instead of running them
#
# Why it is shaped this way:
# - A pod slice is one JAX program over several hosts, so the same command starts on every
#   worker at once (`gcloud compute tpus tpu-vm ssh --worker=all`) with `--distributed=on`;
#   JAX finds the coordinator and the process ids from the TPU metadata.
# - Python: the TPU images run Ubuntu 22.04, whose Python 3.10 is older than jax supports (and
#   may lack python3-venv). `setup` installs uv and lets it put a Python $PYTHON_VERSION in the
#   venv, so nothing comes from apt. unattended-upgrades starts with the VM and holds dpkg's lock
#   for minutes: `setup` stops it (and the apt timers, so that no upgrade runs under a training
#   run) and waits for any apt or dpkg still running.
# - Data and workdir are gs:// paths, read and written directly: TFDS reads
#   gs://$BUCKET/tensorflow_datasets (prepared once with `tfds build`), each host its share; the
#   workdir gs://$BUCKET/runs/RUN is written through TensorFlow's Cloud Storage file system,
#   and orbax commits each checkpoint with a marker file. No Cloud Storage FUSE mount: it cannot
#   rename a directory atomically (how orbax commits a checkpoint on a disk) and shows a file
#   only once it is closed.
# - `run` starts detached (nohup), appending to ~/RUN.log, with its PID in ~/RUN.pid. It first
#   checks every worker and starts nothing if RUN is still alive on one or a process holds its
#   TPU; a /tmp/libtpu_lockfile left by a dead process (libtpu would refuse the TPU) is removed.
#   Calling `run` again with the same RUN and CONFIG resumes from the checkpoints in the bucket.
# - `stop` signals only the PID in ~/RUN.pid and only if that process is this run (PIDs are
#   reused), then waits up to $STOP_TIMEOUT seconds for it to save its state and exit.
# - A preempted TPU VM is gone with its disk: recreate it, `setup`, then `run` again.
set -euo pipefail

usage() {
  sed -n '2,9p' "$0" >&2
  exit 2
}

DRY_RUN=0
if [[ ${1:-} == --dry-run ]]; then
  DRY_RUN=1
  shift
fi

: "${TPU:?set TPU to the TPU VM name}" "${ZONE:?set ZONE to its zone}"
REPO="$(cd "$(dirname "$0")/.." && pwd)"
REMOTE_DIR=jtransfer
# shellcheck disable=SC2088  # ~ is expanded on the worker
VENV='~/jtransfer-venv'
PYTHON_VERSION="${PYTHON_VERSION:-3.12}"  # jax's newest releases need 3.12; >= 3.11 works
UV_VERSION=0.13.9
STOP_TIMEOUT="${STOP_TIMEOUT:-900}"

x() {  # run a command, or print it (shell-quoted, after '+') with --dry-run
  if ((DRY_RUN)); then
    printf '+'
    printf ' %q' "$@"
    printf '\n'
  else
    "$@"
  fi
}

on_workers() {  # on_workers WORKER SCRIPT: run SCRIPT (a shell string) on WORKER (or all)
  x gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --worker="$1" --command="$2"
}

setup() {
  [[ $# -eq 0 ]] || usage
  local archive="${TMPDIR:-/tmp}/jtransfer-$$.tar.gz"
  x git -C "$REPO" archive --format=tar.gz -o "$archive" HEAD
  x gcloud compute tpus tpu-vm scp "$archive" "$TPU:~/jtransfer.tar.gz" --zone="$ZONE" --worker=all
  x rm -f "$archive"
  on_workers all "set -euo pipefail
    sudo systemctl stop unattended-upgrades.service apt-daily.timer apt-daily-upgrade.timer || true
    while pgrep -x 'unattended-upgr|apt|apt-get|dpkg' >/dev/null; do
      echo \"\$(hostname): waiting for apt/dpkg to finish\"; sleep 5
    done
    rm -rf ~/$REMOTE_DIR && mkdir -p ~/$REMOTE_DIR && tar -xzf ~/jtransfer.tar.gz -C ~/$REMOTE_DIR
    [ -x ~/.local/bin/uv ] ||
      curl -LsSf https://astral.sh/uv/$UV_VERSION/install.sh | env UV_NO_MODIFY_PATH=1 sh
    rm -rf $VENV && ~/.local/bin/uv venv --python $PYTHON_VERSION $VENV
    ~/.local/bin/uv pip install --python $VENV/bin/python -e ~/$REMOTE_DIR'[tpu]'
    $VENV/bin/python -c 'import sys, jax, jtransfer; print(sys.version.split()[0], jax.__version__)'"
}

check_name() {
  [[ $1 =~ ^[A-Za-z0-9._-]+$ ]] || { echo "RUN must be letters, digits, . _ -: got '$1'" >&2; exit 2; }
}

# Shell for a worker, after NAME= and WORKDIR=: `ours PID` is true when PID is alive and is
# `python -m jtransfer.main ... --workdir=$WORKDIR` (not a process that reused a dead run's PID).
# shellcheck disable=SC2016  # expanded on the worker
OURS='ours() {
  local args
  args=$(tr "\0" "\n" < "/proc/$1/cmdline" 2>/dev/null) || return 1
  grep -qxF jtransfer.main <<< "$args" && grep -qxF -- "--workdir=$WORKDIR" <<< "$args"
}
pid=$(cat ~/"$NAME.pid" 2>/dev/null || true)'

run() {
  : "${BUCKET:?set BUCKET to the GCS bucket (without gs://)}"
  [[ $# -ge 2 ]] || usage
  local name=$1 config=$2
  shift 2
  check_name "$name"
  local workdir="gs://$BUCKET/runs/$name" args  # args quoted for the remote shell
  args="$(printf '%q ' "--config=$config" "--workdir=$workdir" \
    "--config.data.data_dir=gs://$BUCKET/tensorflow_datasets" "$@")"
  # shellcheck disable=SC2016
  on_workers all "NAME=$name WORKDIR=$workdir VENV=$VENV
$OURS"'
if [ ! -x "$VENV/bin/python" ]; then
  echo "$(hostname): no $VENV: run setup first (again on a recreated VM)" >&2
  exit 1
fi
if [ -n "$pid" ] && ours "$pid"; then
  echo "$(hostname): $NAME is still running (pid $pid); stop it first" >&2
  exit 1
fi
holders=$(sudo lsof -t -w /dev/accel* /dev/vfio/[0-9]* 2>/dev/null | sort -u | tr "\n" " ")
if [ -n "$holders" ]; then
  echo "$(hostname): the TPU is in use by pid $holders" >&2
  exit 1
fi
if [ -e /tmp/libtpu_lockfile ]; then echo "$(hostname): removing a stale /tmp/libtpu_lockfile"; fi
sudo rm -f /tmp/libtpu_lockfile'
  on_workers all "cd ~/$REMOTE_DIR || exit 1
    echo \"=== \$(date -u +%FT%TZ) launch_tpu.sh run $name\" >> ~/$name.log
    nohup $VENV/bin/python -m jtransfer.main --distributed=on $args >> ~/$name.log 2>&1 < /dev/null &
    echo \$! > ~/$name.pid"
  if ((!DRY_RUN)); then
    echo "started $name on every worker of $TPU; workdir $workdir"
    echo "follow it with: $0 logs $name"
  fi
}

logs() {
  [[ $# -eq 1 ]] || usage
  check_name "$1"
  on_workers 0 "tail -n 50 -F ~/$1.log"
}

stop() {
  : "${BUCKET:?set BUCKET to the GCS bucket (without gs://)}"
  [[ $# -eq 1 ]] || usage
  check_name "$1"
  # shellcheck disable=SC2016
  on_workers all "NAME=$1 WORKDIR=gs://$BUCKET/runs/$1 TIMEOUT=$STOP_TIMEOUT
$OURS"'
if [ -z "$pid" ] || ! ours "$pid"; then
  echo "$(hostname): $NAME is not running"
  rm -f ~/"$NAME.pid"
  exit 0
fi
kill -TERM "$pid"
waited=0
while ours "$pid"; do
  if [ "$waited" -ge "$TIMEOUT" ]; then
    echo "$(hostname): $NAME (pid $pid) still running after ${TIMEOUT}s" >&2
    exit 1
  fi
  sleep 1
  waited=$((waited + 1))
done
rm -f ~/"$NAME.pid"
echo "$(hostname): $NAME stopped: $(tail -n 1 ~/"$NAME.log" 2>/dev/null)"'
}

[[ $# -ge 1 ]] || usage
command=$1
shift
case "$command" in
  setup) setup "$@" ;;
  run) run "$@" ;;
  logs) logs "$@" ;;
  stop) stop "$@" ;;
  *) usage ;;
esac
