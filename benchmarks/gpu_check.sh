#!/usr/bin/env bash
# The GPU checks in one run, for a session that is lent a CUDA machine (one device call: each
# step has a timeout, 560 s in all): the CUDA tests, then CTC against FeatureAblation on
# ResNet-50 224², K = 64, with one image and with 16, eager and with the compiled sharing,
# kernel launches counted.
#
#   bash benchmarks/gpu_check.sh            # writes its reports under $OUT (or out/gpu)
#
# The package is used from this checkout (PYTHONPATH), so only torch, torchvision, captum,
# zennit, scikit-image, scikit-learn and hypothesis must be installed there (for $PYTHON, or
# python).
set -u
if [ $# -gt 0 ]; then  # no options: print this header
    sed -n '2,/^set -u/p' "$0" | sed '$d'
    exit 2
fi
python=${PYTHON:-python}
out=${OUT:-out/gpu}
mkdir -p "$out"
export PYTHONPATH=${PWD}${PYTHONPATH:+:$PYTHONPATH}
"$python" - <<'PY' 2>&1 | tee "$out/versions.txt"
import importlib, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))
for name in ("torchvision", "captum", "zennit", "skimage", "sklearn", "hypothesis"):
    try:
        print(name, importlib.import_module(name).__version__)
    except ImportError as error:
        print(name, "MISSING:", error)
PY
timeout 200 "$python" -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tail -15 \
    | tee "$out/test_cuda.txt"
for batch in 1 16; do
    timeout 180 "$python" benchmarks/bench_ctc.py --device cuda --model resnet50 --features 64 \
        --batch "$batch" --repeats 5 --threads 4 --no-variants --launches --compiled-sharing \
        2>&1 | grep -v Warning | tee "$out/bench_ctc_batch$batch.txt"
done
