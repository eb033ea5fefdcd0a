#!/bin/bash
# Run an `aam tune` search on a Ray cluster built inside one SLURM allocation.
#
# The first allocated node runs the Ray head (and the `aam tune` driver); every other node runs a Ray
# worker. All of them must see the same aam install, the dataset folder and the storage folder at
# the same paths, so put DATA and STORAGE on a shared filesystem (or use an s3:// STORAGE).
#
# Usage (edit the #SBATCH lines for your site first):
#   sbatch cluster/slurm-aam-tune.sh SPACE.yaml DATASET_DIR STORAGE_DIR [NAME]
#   sbatch --nodes=4 cluster/slurm-aam-tune.sh search_spaces/count_embed.yaml \
#       /shared/data/mouse_age /shared/aam-experiments
# or give them as environment variables: SPACE=... DATA=... STORAGE=... NAME=... sbatch cluster/slurm-aam-tune.sh
# Optional environment:
#   AAM_VENV=/path/to/venv     activated on every node (otherwise load your modules/conda below)
#   RAY_HEAD_IP=10.1.2.3       the head's address on the fast network, if `hostname --ip-address` picks the wrong one
#   RAY_AUTH_TOKEN_PATH=FILE   token file on a filesystem every node shares, if your home is not shared
#   RAY_WAIT_S=300             how long to wait for all nodes to join
# Watch it:  ssh -L 8265:127.0.0.1:DASHBOARD_PORT HEAD_NODE  (both are printed in the job log).
# If the job ends early (time limit), continue with: aam tune --resume STORAGE_DIR/NAME
#
# Token authentication: RAY_AUTH_MODE=token is exported for every `ray` command and srun step.
# The token is ~/.ray/auth_token: this script creates it on the head node if it does not exist
# (`ray get-auth-token --generate`, mode 0600). Worker nodes read the same file, which works because
# home directories are usually shared on SLURM clusters. If yours is not, point RAY_AUTH_TOKEN_PATH
# at a file on shared storage (created here if missing).
#
#SBATCH --job-name=aam-tune
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=16
#SBATCH --gpus-per-node=4
#SBATCH --mem=0
#SBATCH --time=04:00:00
#SBATCH --exclusive
#SBATCH --output=aam-tune-%j.out
# --exclusive: Ray uses fixed ports (e.g. the dashboard agent's 52365) and /tmp on each node; two Ray
# clusters on one node can collide. --mem=0 asks for all of each node's memory.

set -euo pipefail

# ---- environment on every node (srun steps inherit it) ---------------------------------------------
# module load python/3.11 cuda/12.4         # site-specific; or conda activate aam
if [[ -n "${AAM_VENV:-}" ]]; then
    # shellcheck disable=SC1091
    source "$AAM_VENV/bin/activate"
fi

SPACE="${1:-${SPACE:-}}"
DATA="${2:-${DATA:-}}"
STORAGE="${3:-${STORAGE:-}}"
NAME="${4:-${NAME:-}}"
RAY_WAIT_S="${RAY_WAIT_S:-300}"

die() { echo "slurm-aam-tune: $*" >&2; exit 2; }
[[ -n "$SPACE" && -n "$DATA" && -n "$STORAGE" ]] || die "usage: sbatch $0 SPACE.yaml DATASET_DIR STORAGE_DIR [NAME]"
[[ -f "$SPACE" ]] || die "$SPACE: no such search-space file"
[[ -d "$DATA" ]] || die "$DATA: no such dataset folder (it must be on a filesystem every node sees)"
command -v ray >/dev/null || die "ray is not on PATH: set AAM_VENV or load your environment in this script"
command -v aam >/dev/null || die "aam is not on PATH: set AAM_VENV or load your environment in this script"
[[ -n "${SLURM_JOB_ID:-}" ]] || die "run this with sbatch (it needs a SLURM allocation)"
case "$STORAGE" in
    *://*) ;;                                             # s3://, gs://: every node needs credentials
    *) mkdir -p "$STORAGE"; STORAGE="$(cd "$STORAGE" && pwd)" ;;   # Ray needs an absolute path
esac

# ---- token authentication ---------------------------------------------------------------------------
export RAY_AUTH_MODE=token
export RAY_USAGE_STATS_ENABLED=0
if [[ -n "${RAY_AUTH_TOKEN_PATH:-}" ]]; then
    if [[ ! -s "$RAY_AUTH_TOKEN_PATH" ]]; then
        mkdir -p "$(dirname "$RAY_AUTH_TOKEN_PATH")"
        (umask 077 && python3 -c 'import secrets; print(secrets.token_hex(32), end="")' > "$RAY_AUTH_TOKEN_PATH")
    fi
    chmod 600 "$RAY_AUTH_TOKEN_PATH"
else
    ray get-auth-token --generate >/dev/null 2>&1      # writes ~/.ray/auth_token if missing; never print it
    chmod 600 "$HOME/.ray/auth_token"
fi

# ---- nodes, address and ports -----------------------------------------------------------------------
mapfile -t nodes < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
head_node="${nodes[0]}"
workers=("${nodes[@]:1}")
num_nodes="${#nodes[@]}"
[[ "$(hostname -s)" == "${head_node%%.*}" ]] || echo "note: batch script runs on $(hostname -s), head is $head_node"

if [[ -z "${RAY_HEAD_IP:-}" ]]; then
    RAY_HEAD_IP="$(srun --nodes=1 --ntasks=1 -w "$head_node" hostname --ip-address | awk '{print $1}')"
fi
head_ip="$RAY_HEAD_IP"

# A port that is free on this (the head) node, starting from a job-specific base.
port_is_free() {
    python3 - "$1" <<'EOF'
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
try:
    s.bind(("", int(sys.argv[1])))
except OSError:
    sys.exit(1)
finally:
    s.close()
EOF
}
pick_port() {
    local p="$1"
    while ! port_is_free "$p"; do p=$((p + 1)); done
    echo "$p"
}
base=$((20000 + (SLURM_JOB_ID % 4000) * 10))    # above Ray's worker port range (10002-19999)
port="$(pick_port "$base")"                      # GCS
dashboard_port="$(pick_port $((base + 1)))"
client_port="$(pick_port $((base + 2)))"
address="$head_ip:$port"
export RAY_ADDRESS="$address"

cpus="${SLURM_CPUS_PER_TASK:-$(nproc)}"
gpus="${SLURM_GPUS_ON_NODE:-${SLURM_GPUS_PER_NODE:-}}"
gpus="${gpus##*:}"                               # "a100:4" -> "4"
gpu_args=()
if [[ "$gpus" =~ ^[0-9]+$ ]]; then
    gpu_args=(--num-gpus="$gpus")
else
    gpus="auto"                                  # Ray counts the step's CUDA_VISIBLE_DEVICES
fi
temp_dir="/tmp/ray-$SLURM_JOB_ID"                # per job: /tmp/ray may belong to another user

# ---- stop Ray on exit ---------------------------------------------------------------------------------
step_pids=()
tune_pid=""
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n "$tune_pid" ]] && kill -0 "$tune_pid" 2>/dev/null; then
        kill -TERM "$tune_pid" 2>/dev/null || true
        wait "$tune_pid" 2>/dev/null || true
    fi
    echo "stopping Ray on $num_nodes node(s)"
    ray stop --grace-period 30 >/dev/null 2>&1 || true   # the head node (this node)
    # Ending the `ray start --block` steps stops Ray on every node, workers included.
    for pid in ${step_pids[@]+"${step_pids[@]}"}; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 143' TERM INT

# ---- start the head, then the workers -----------------------------------------------------------------
echo "Ray head: $head_node ($address), $cpus CPUs and $gpus GPUs per node, $num_nodes node(s)"
srun --nodes=1 --ntasks=1 --cpus-per-task="$cpus" -w "$head_node" --export=ALL \
    ray start --head --node-ip-address="$head_ip" --port="$port" \
        --dashboard-host=127.0.0.1 --dashboard-port="$dashboard_port" \
        --ray-client-server-port="$client_port" \
        --num-cpus="$cpus" ${gpu_args[@]+"${gpu_args[@]}"} --temp-dir="$temp_dir" --block &
step_pids+=("$!")

count_nodes() {   # alive nodes, from `ray status` (Active: and Idle: sections)
    { ray status --address "$address" 2>/dev/null || true; } |
        awk '/^Pending:/ {f = 0} f && $1 ~ /^[0-9]+$/ {n += $1} /^Active:/ {f = 1} END {print n + 0}'
}
wait_for_nodes() {   # wait_for_nodes N: until N nodes are up, or RAY_WAIT_S seconds
    local want="$1" deadline=$((SECONDS + RAY_WAIT_S)) have=0
    while (( SECONDS < deadline )); do
        have="$(count_nodes)"
        (( have >= want )) && { echo "$have/$want Ray node(s) up"; return 0; }
        sleep 5
    done
    echo "slurm-aam-tune: only $have of $want Ray node(s) joined within ${RAY_WAIT_S}s" >&2
    return 1
}
wait_for_nodes 1

for node in ${workers[@]+"${workers[@]}"}; do
    srun --nodes=1 --ntasks=1 --cpus-per-task="$cpus" -w "$node" --export=ALL \
        ray start --address="$address" \
            --num-cpus="$cpus" ${gpu_args[@]+"${gpu_args[@]}"} --temp-dir="$temp_dir" --block &
    step_pids+=("$!")
done
wait_for_nodes "$num_nodes"

echo "dashboard: ssh -L 8265:127.0.0.1:$dashboard_port $head_node   then http://127.0.0.1:8265 (token: ~/.ray/auth_token)"

# ---- the search -----------------------------------------------------------------------------------------
args=("$SPACE" --data "$DATA" --storage-path "$STORAGE" --address "$address")
if [[ -n "$NAME" ]]; then
    args+=(--name "$NAME")
fi
# In the background, so a TERM from SLURM (time limit, scancel) reaches the trap at once.
aam tune "${args[@]}" &
tune_pid=$!
wait "$tune_pid"
