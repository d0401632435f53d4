#!/usr/bin/env bash
# ONNX Runtime's CUDA provider with improvd itself, on a GPU machine that has PyTorch (and
# CUDA 13, cuDNN 9 as nvidia-* wheels) but neither TensorFlow nor onnxruntime-gpu nor improvd's
# MIDI libraries. Three steps, each from the repository root:
#
#   bash bench/cuda_check.sh fetch      # HERE (network): wheels for Python 3.12 into .whl/, the
#                                       # onnxruntime-gpu wheel cut into parts of 60 MiB
#   bash bench/cuda_check.sh receive    # THERE, once per part, carrying .whl/part-N (one per
#                                       # command, consecutive calls while the machine is warm):
#                                       # appends it to /tmp/improvd-wheels/
#   bash bench/cuda_check.sh check      # THERE, carrying .whl/small: installs, then a real start
#                                       # with --device cuda, bench/step.py (CPU beside CUDA) and
#                                       # bench/answer.py (K = 64, 128, 256 on CUDA); all under $OUT
set -euo pipefail
ORT_GPU=${ORT_GPU:-onnxruntime-gpu==1.31.1}  # the newest the index offered on 2026-11-30
SMALL="mido==1.3.3 python-rtmidi==1.5.8 packaging"
PART_MIB=60
STASH=/tmp/improvd-wheels
RESULTS=${OUT:-bench/results}

case "${1:-}" in
fetch)
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> "$(git rev-parse --git-path info/exclude)"
    rm -rf .whl && mkdir -p .whl/small .whl/big
    platforms=""
    for n in 2_28 2_27 2_17; do platforms="$platforms --platform manylinux_${n}_x86_64"; done
    # shellcheck disable=SC2086
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        $platforms --platform manylinux2014_x86_64 -d .whl/small $SMALL
    # shellcheck disable=SC2086
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        $platforms --platform manylinux2014_x86_64 -d .whl/big "$ORT_GPU"
    wheel=$(ls .whl/big/*.whl)
    split -b "${PART_MIB}m" -d "$wheel" ".whl/part-"
    basename "$wheel" > .whl/small/ORT_WHEEL_NAME
    rm -rf .whl/big
    echo "carry each of these in its own command with 'receive':"; ls -1 .whl/part-*
    ;;
receive)
    mkdir -p "$STASH"
    for part in .whl/part-*; do cp "$part" "$STASH/"; echo "received $part"; done
    ls -l "$STASH"
    ;;
check)
    name=$(cat .whl/small/ORT_WHEEL_NAME)
    cat "$STASH"/part-* > "/tmp/$name"
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "/tmp/$name" .whl/small/*.whl
    export PYTHONPATH=/tmp/site:$PWD
    mkdir -p "$RESULTS"
    python3 -c "import onnxruntime as ort; print('onnxruntime', ort.__version__, ort.get_available_providers())"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$RESULTS/gpu.txt"
    # a real start: improvd continues the motif with the model on CUDA, and says which provider runs
    python3 -m improvd --device cuda -v --seed-file examples/motif.mid --output-file "$RESULTS/cuda.mid" \
        --length 8 2>&1 | tee "$RESULTS/improvd-cuda.log"
    grep -q "CUDAExecutionProvider" "$RESULTS/improvd-cuda.log" || { echo "improvd did not run on CUDA"; exit 1; }
    python3 bench/step.py --int8 exported/improvd.onnx --out "$RESULTS/step-cuda.json" 2>&1 | tee "$RESULTS/step.txt"
    python3 bench/answer.py --out "$RESULTS/answer-cuda.json" 2>&1 | tee "$RESULTS/answer.txt"
    ;;
*)
    echo "usage: bash bench/cuda_check.sh fetch|receive|check" >&2
    exit 2
    ;;
esac
