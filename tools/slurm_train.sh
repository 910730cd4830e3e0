#!/usr/bin/env bash
# Usage: [GPUS=8 GPUS_PER_NODE=8] tools/slurm_train.sh PARTITION JOB_NAME CONFIG [train.py options]
set -x
PARTITION=$1
JOB_NAME=$2
CONFIG=$3
GPUS=${GPUS:-4}
GPUS_PER_NODE=${GPUS_PER_NODE:-4}
CPUS_PER_TASK=${CPUS_PER_TASK:-5}
SRUN_ARGS=${SRUN_ARGS:-""}

# The interpreter: $PYTHON when set (e.g. PYTHON=.venv-upstream/bin/python for the
# upstream stack), else the activated virtual environment's, else the project's .venv
# (made by `make`) when it exists, else `python` from PATH.
VENV_PYTHON="$(dirname "$0")/../.venv/bin/python"
if [ -z "${PYTHON:-}" ]; then
    if [ -n "${VIRTUAL_ENV:-}" ] && [ -x "$VIRTUAL_ENV/bin/python" ]; then PYTHON=$VIRTUAL_ENV/bin/python
    elif [ -x "$VENV_PYTHON" ]; then PYTHON=$VENV_PYTHON
    else PYTHON=python; fi
fi
PYTHONPATH="$(dirname "$0")/..":$PYTHONPATH \
srun -p "${PARTITION}" \
    --job-name="${JOB_NAME}" \
    --gres=gpu:"${GPUS_PER_NODE}" \
    --ntasks="${GPUS}" \
    --ntasks-per-node="${GPUS_PER_NODE}" \
    --cpus-per-task="${CPUS_PER_TASK}" \
    --kill-on-bad-exit=1 \
    ${SRUN_ARGS} \
    "$PYTHON" -u "$(dirname "$0")/train.py" "${CONFIG}" --launcher=slurm "${@:4}"
