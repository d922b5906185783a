#!/usr/bin/env bash
# Run a jtransfer config on every worker of a Cloud TPU VM (one host or a pod slice).
#
#   export TPU=my-v4-32 ZONE=us-central2-b BUCKET=my-bucket
#   scripts/launch_tpu.sh setup                   # every worker: code, venv, bucket mounted
#   scripts/launch_tpu.sh run RUN CONFIG [--config.key=value ...]
#   scripts/launch_tpu.sh logs RUN                # follow worker 0's output
#   scripts/launch_tpu.sh stop RUN                # SIGTERM: every worker saves and exits
#
# Why it is shaped this way:
# - A pod slice is one JAX program over several hosts, so the same command starts on every
#   worker at once (`gcloud compute tpus tpu-vm ssh --worker=all`) with `--distributed=on`;
#   JAX finds the coordinator and the process ids from the TPU metadata.
# - TFDS reads gs:// itself, so the data stays in the bucket (gs://$BUCKET/tensorflow_datasets,
#   prepared once beforehand with `tfds build`): each host reads only its share.
# - The workdir is the bucket mounted with Cloud Storage FUSE at ~/gcs on every worker, so
#   checkpoints, metrics.jsonl and TensorBoard events land in gs://$BUCKET/runs/RUN through
#   plain file operations, and every host sees the same workdir, which is what resuming needs.
# - The run is detached (nohup) with its output in ~/RUN.log on each worker: it survives the
#   ssh session, and a preempted or stopped run resumes when `run` is called again with the
#   same RUN and CONFIG.
set -euo pipefail

usage() {
  sed -n '2,8p' "$0" >&2
  exit 2
}

: "${TPU:?set TPU to the TPU VM name}" "${ZONE:?set ZONE to its zone}"
REPO="$(cd "$(dirname "$0")/.." && pwd)"
REMOTE_DIR=jtransfer
VENV='~/jtransfer-venv'

on_workers() {  # on_workers WORKER COMMAND: run COMMAND (a shell string) on WORKER (or all)
  gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --worker="$1" --command="$2"
}

setup() {
  : "${BUCKET:?set BUCKET to the GCS bucket (without gs://)}"
  local archive
  archive="$(mktemp -d)/jtransfer.tar.gz"
  git -C "$REPO" archive --format=tar.gz -o "$archive" HEAD
  gcloud compute tpus tpu-vm scp "$archive" "$TPU:~/jtransfer.tar.gz" --zone="$ZONE" --worker=all
  on_workers all "set -e
    rm -rf ~/$REMOTE_DIR && mkdir -p ~/$REMOTE_DIR && tar -xzf ~/jtransfer.tar.gz -C ~/$REMOTE_DIR
    python3 -m venv $VENV && $VENV/bin/pip install -q -U pip
    $VENV/bin/pip install -q -e ~/$REMOTE_DIR'[tpu]'
    if ! command -v gcsfuse >/dev/null; then
      echo 'deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-'\$(lsb_release -cs)' main' |
        sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null
      curl -s https://packages.cloud.google.com/apt/doc/apt-key.gpg |
        sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null
      sudo apt-get -qq update && sudo apt-get -qq install -y gcsfuse
    fi
    mkdir -p ~/gcs && (mountpoint -q ~/gcs || gcsfuse --implicit-dirs $BUCKET ~/gcs)
    mkdir -p ~/gcs/runs"
}

check_name() {
  [[ $1 =~ ^[A-Za-z0-9._-]+$ ]] || { echo "RUN must be letters, digits, . _ -: got '$1'" >&2; exit 2; }
}

run() {
  : "${BUCKET:?set BUCKET to the GCS bucket (without gs://)}"
  [[ $# -ge 2 ]] || usage
  local name=$1 config=$2
  shift 2
  check_name "$name"
  local args  # quoted for the remote shell
  args="$(printf '%q ' "--config=$config" "--config.data.data_dir=gs://$BUCKET/tensorflow_datasets" "$@")"
  on_workers all "cd ~/$REMOTE_DIR && mountpoint -q ~/gcs && mkdir -p ~/gcs/runs/$name || exit 1
    nohup $VENV/bin/python -m jtransfer.main --distributed=on --workdir=\$HOME/gcs/runs/$name \
      $args > ~/$name.log 2>&1 < /dev/null &
    echo \$! > ~/$name.pid"
  echo "started $name on every worker of $TPU; workdir gs://$BUCKET/runs/$name"
  echo "follow it with: $0 logs $name"
}

logs() {
  [[ $# -eq 1 ]] || usage
  check_name "$1"
  on_workers 0 "tail -n 50 -F ~/$1.log"
}

stop() {
  [[ $# -eq 1 ]] || usage
  check_name "$1"
  on_workers all "kill -TERM \$(cat ~/$1.pid) 2>/dev/null || true"
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
