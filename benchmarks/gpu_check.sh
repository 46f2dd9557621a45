#!/usr/bin/env bash
# The GPU checks in one run, for a session that is lent a CUDA machine (one device call: each
# step has a timeout, 560 s in all, $GPU_CHECK_SECONDS to change): the CUDA tests (270 s at
# most), then CTC against FeatureAblation on ResNet-50 224², K = 64, with one image and with 16
# (sharing the time left), eager and with the compiled sharing, kernel launches counted.
#
#   bash benchmarks/gpu_check.sh wheels     # here, first: the wheels the device lacks, in .whl/
#   bash benchmarks/gpu_check.sh            # there (carry .whl): reports under $OUT (or out/gpu)
#
# The device's image has torch, torchvision, timm, transformers 5, scikit-image, scikit-learn,
# matplotlib and hypothesis, but not captum, zennit, segment-anything, jenkspy or diskcache,
# without which nothing imports. `wheels` downloads them, and the local versions of
# transformers (4.x, with the huggingface-hub and tokenizers it needs) and timm so that the
# device runs what the CPU tests run, with ${PYTHON:-.venv/bin/python}'s pip (it needs the
# network); the device call then carries .whl (19 MB), e.g.
#   run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=600)
# The run installs what .whl/ holds into /tmp/site, and stops at once, naming what is missing,
# when a package still does not import. The package is used from this checkout (PYTHONPATH);
# ${PYTHON:-python3} runs it. The test log, its JUnit XML, the versions and the two benchmark
# tables go to $OUT (5 files).
set -u
wanted=(captum zennit segment-anything jenkspy diskcache)
wanted+=(transformers huggingface-hub tokenizers timm)
case "${1:-}" in
    "") ;;
    wheels)
        python=${PYTHON:-.venv/bin/python}
        # the locally installed version of each, so that the device runs what CI runs
        specs=$("$python" - "${wanted[@]}" <<'PY'
import importlib.metadata, sys
for name in sys.argv[1:]:
    try:
        print(f"{name}=={importlib.metadata.version(name)}")
    except importlib.metadata.PackageNotFoundError:
        print(name)
PY
) || exit 1
        # shellcheck disable=SC2086  # one argument per line of specs
        exec "$python" -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
            --implementation cp --platform manylinux_2_28_x86_64 \
            --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl $specs
        ;;
    *)  # any other argument: print this header
        sed -n '2,/^set -u/p' "$0" | sed '$d'
        exit 2
        ;;
esac
python=${PYTHON:-python3}
out=${OUT:-out/gpu}
budget=${GPU_CHECK_SECONDS:-560}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
site=
if compgen -G ".whl/*.whl" >/dev/null; then
    site=/tmp/site
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$site" .whl/*.whl 2>&1 | tail -5
fi
export PYTHONPATH=${PWD}${site:+:$site}${PYTHONPATH:+:$PYTHONPATH}
timeout 60 "$python" - <<'PY' 2>&1 | tee "$out/versions.txt"
import importlib, importlib.metadata, sys
import torch
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)
if not torch.cuda.is_available():
    sys.exit("gpu_check.sh: torch sees no CUDA device; nothing to check")
print("device", torch.cuda.get_device_name(0))
missing = []
for module, dist in (
    ("torchvision", "torchvision"), ("captum", "captum"), ("zennit", "zennit"),
    ("segment_anything", "segment-anything"), ("jenkspy", "jenkspy"), ("diskcache", "diskcache"),
    ("skimage", "scikit-image"), ("sklearn", "scikit-learn"), ("hypothesis", "hypothesis"),
    ("timm", "timm"), ("transformers", "transformers"),
):
    try:
        importlib.import_module(module)
        print(dist, importlib.metadata.version(dist))
    except Exception as error:  # noqa: BLE001 - any import failure is reported
        print(dist, "MISSING:", type(error).__name__, error)
        missing += [dist] if dist not in ("timm", "transformers") else []
try:  # the checkout itself, with every import the tests make
    importlib.import_module("ctc_plugin.adapters.sam")
    importlib.import_module("tests.test_cuda")
    print("ctc_plugin from", importlib.import_module("ctc_plugin").__file__)
except Exception as error:  # noqa: BLE001 - any import failure is reported
    print("ctc_plugin MISSING:", type(error).__name__, error)
    missing.append(getattr(error, "name", None) or "ctc_plugin")
if missing:
    sys.exit(
        f"gpu_check.sh: cannot import {', '.join(missing)}: run `bash benchmarks/gpu_check.sh "
        "wheels` where pip reaches PyPI, and carry .whl to the device"
    )
PY
[ "${PIPESTATUS[0]}" -eq 0 ] || exit 3
# 270 s of 560; SIGINT: pytest stops, prints the summary of what ran and writes the XML
timeout -s INT -k 20 "$((budget * 27 / 56))" "$python" -m pytest -q -p no:cacheprovider -rfEs \
    --durations=15 --junitxml="$out/test_cuda.xml" tests/test_cuda.py 2>&1 \
    | tee "$out/test_cuda.txt" | tail -40
for batch in 1 16; do
    # the time left, shared by the runs left (the first compiles the sharing, the second
    # reuses inductor's cache)
    limit=$(((budget - SECONDS) / (batch == 1 ? 2 : 1)))
    if [ "$limit" -lt 30 ]; then
        echo "gpu_check.sh: no time left for bench_ctc.py --batch $batch" \
            | tee "$out/bench_ctc_batch$batch.txt"
        continue
    fi
    timeout "$limit" "$python" benchmarks/bench_ctc.py --device cuda --model resnet50 \
        --features 64 --batch "$batch" --repeats 5 --threads 4 --no-variants --launches \
        --compiled-sharing 2>&1 | grep -v Warning | tee "$out/bench_ctc_batch$batch.txt"
done
