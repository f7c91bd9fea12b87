#!/bin/bash
# The GPU check of issue 14 in one script, for a short lease on one GPU (about 5 minutes of work with defaults):
#   e2e         (not in the defaults) the code paths on the GPU end to end: a smoke-scale study with label noise
#               and two runs packed on the GPU, `gst report`, `gst flatness` of one run, and the Python API
#               with a model of its own (examples/custom_model.py);
#   suite       (not in the defaults) tests/test_device.py on the GPU (GSTLAB_TEST_DEVICE=cuda), then the fast
#               suite on the machine's CPUs and its torch/Python (pytest-xdist, SUITE_WORKERS processes; the suite
#               hides the GPU, see tests/conftest.py). Tests that read Fashion-MNIST need it where gstlab looks;
#   pac_bayes   (not in the defaults) bench_pac_bayes.py at paper width on the GPU: one σ of the PAC-Bayes
#               flatness search with its noise draws kept on the GPU vs drawn anew on the CPU;
#   throughput  bench_throughput.py at paper width (vgg11_bn, resnet18) on CIFAR-shaped data: the fast path vs a
#               DataLoader loop, peak memory, event cost;
#   alone       one real Figure 2 VGG11 run (Prune_L 13%, bf16) for ALONE_S seconds;
#   packed      the PACKED runs on the GPU at once (--runs-per-gpu = their number) for PACKED_S seconds; by
#               default Prune_S 13% and Prune_L 13%, each in bf16 and fp32 with the same seed, so that the pairs
#               differ only in precision.
# The runs are the paper-scale F2_VGG presets (325 epochs, Adam, batch 128, augmentation), stopped after those
# seconds. The data is Fashion-MNIST, which the paper scale pads to 32x32 (CIFAR-10 cannot be fetched on an
# offline GPU machine); the four IDX files must be in FMNIST (default .data/fashion-mnist, carried along).
# Everything goes to OUT (default ./gpu_out); benchmarks/gpu_report.py OUT... makes the tables.
#   bash benchmarks/gpu_check.sh
#   STEPS=alone SET_EXTRA=", train.compile: true, train.compile_mode: reduce-overhead" bash benchmarks/gpu_check.sh
set -u
OUT=${OUT:-$PWD/gpu_out}
FMNIST=${FMNIST:-$PWD/.data/fashion-mnist}
ALONE_S=${ALONE_S:-60}
PACKED_S=${PACKED_S:-150}
DEVICE=${DEVICE:-cuda}
PACKED=${PACKED:-"F2_VGG_2:bf16 F2_VGG_4:bf16 F2_VGG_2:fp32 F2_VGG_4:fp32"}  # PRESET:PRECISION, one run each
STEPS=${STEPS:-"throughput alone packed"}
SUITE_WORKERS=${SUITE_WORKERS:-12}
EXTRA=${EXTRA:-}          # CPU rehearsal: "--n 2048 --n-test 512 --width 0.125 --arch vgg11_bn"
SET_EXTRA=${SET_EXTRA:-}  # CPU rehearsal: ", data.train_subset: 512, data.test_subset: 256, model.width: 0.125"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PY=${PY:-python3}
mkdir -p "$OUT"
work=$(mktemp -d)

{ nvidia-smi -L; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; } > "$OUT/device.txt" 2>&1
$PY -c "import torch, sys; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda)" \
  >> "$OUT/device.txt" 2>&1
$PY -c "from gstlab.environment import cpu_model, native_isa; import os; print('cpu', cpu_model(), native_isa(), os.cpu_count(), 'cores')" \
  >> "$OUT/device.txt" 2>&1

if [[ $STEPS == *e2e* ]]; then
  echo "== 0. end to end on $DEVICE"
  { echo "name: e2e"; echo "figure: figure2"; echo "scale: smoke"; echo "seeds: [0, 1]"; echo "settings:"
    echo "  - preset: F2_VGG_0"; echo "  - preset: F2_VGG_4"
    echo "set: {train.progress: false, train.device: $DEVICE, data.name: fashion_mnist, data.root: '$FMNIST', data.label_noise: 0.2}"
  } > "$work/e2e.yaml"
  {
    $PY -m gstlab.cli sweep "$work/e2e.yaml" --workers 2 --runs-per-gpu 2 --out "$work/e2e" --store "$work/store_e2e" --no-progress
    echo "sweep rc=$?"
    $PY -m gstlab.cli report "$work/e2e"; echo "report rc=$?"
    $PY -m gstlab.cli flatness "$(ls -d "$work"/store_e2e/runs/* | head -1)" --no-progress; echo "flatness rc=$?"
    $PY -c "import sys; sys.path.insert(0, 'examples'); import custom_model as m; m.CONFIG['train']['device'] = '$DEVICE'; m.main('$work/custom')"
    echo "api rc=$?"
    $PY -c "import json, sys; m = json.load(open(sys.argv[1] + '/manifest.json')); print('manifest device', m['device'], m['machine']['gpu'], m['speed'])" "$work/custom"
  } > "$OUT/e2e.log" 2>&1
  grep "rc=\|manifest\|events" "$OUT/e2e.log"
fi

if [[ $STEPS == *suite* ]]; then
  echo "== 0b. tests/test_device.py on $DEVICE, then the test suite on this machine's CPUs"
  GSTLAB_TEST_DEVICE=$DEVICE timeout 200 $PY -m pytest -p no:cacheprovider tests/test_device.py > "$OUT/device_tests.log" 2>&1
  echo "device tests rc=$?"; tail -3 "$OUT/device_tests.log"
  timeout 300 $PY -m pytest -m "not slow" -p no:cacheprovider -n "$SUITE_WORKERS" --deselect tests/test_ray_cluster.py tests \
    > "$OUT/suite.log" 2>&1
  echo "suite rc=$?"; tail -3 "$OUT/suite.log"
fi

if [[ $STEPS == *pac_bayes* ]]; then
  echo "== 0c. PAC-Bayes draws kept vs anew"
  $PY benchmarks/bench_pac_bayes.py --device "$DEVICE" --width 1 --size 32 --channels 3 > "$OUT/pac_bayes.txt" 2>&1
  tail -8 "$OUT/pac_bayes.txt"
fi

if [[ $STEPS == *throughput* ]]; then
  echo "== 1. throughput"
  $PY benchmarks/bench_throughput.py --device "$DEVICE" --epochs 3 $EXTRA > "$OUT/throughput.txt" 2>&1
  head -8 "$OUT/throughput.txt"
fi

study() {  # study NAME PRESET:PRECISION...: a study file of paper-scale settings on Fashion-MNIST
  local name=$1; shift
  { echo "name: $name"; echo "figure: figure2"; echo "scale: paper"; echo "seeds: [0]"; echo "settings:"
    for s in "$@"; do echo "  - {preset: ${s%%:*}, set: {train.precision: ${s##*:}}}"; done
    echo "set: {train.progress: false, train.device: $DEVICE, data.name: fashion_mnist, data.root: '$FMNIST'$SET_EXTRA}"; } > "$work/$name.yaml"
}

sweep_for() {  # sweep_for SECONDS NAME RUNS_PER_GPU: run a study, stop it after SECONDS, sample GPU memory
  local secs=$1 name=$2 rpg=$3
  nvidia-smi --query-gpu=timestamp,memory.used,utilization.gpu --format=csv -l 2 > "$OUT/smi_$name.csv" 2>/dev/null &
  local smi=$!
  setsid $PY -m gstlab.cli sweep "$work/$name.yaml" --workers "$rpg" --runs-per-gpu "$rpg" \
    --threads-per-worker 2 --out "$work/$name" --store "$work/store_$name" > "$OUT/sweep_$name.log" 2>&1 &
  local pid=$! i
  for ((i = 0; i < secs; i++)); do kill -0 $pid 2>/dev/null || break; sleep 1; done
  kill -INT -- -$pid 2>/dev/null; sleep 3; kill -KILL -- -$pid 2>/dev/null; kill $smi 2>/dev/null
}

if [[ $STEPS == *alone* ]]; then
  echo "== 2a. one run alone"
  study alone F2_VGG_4:bf16
  sweep_for "$ALONE_S" alone 1
fi
if [[ $STEPS == *packed* ]]; then
  echo "== 2b. runs packed"
  study packed $PACKED
  sweep_for "$PACKED_S" packed $(wc -w <<< "$PACKED")
fi

# the runs' small files (no checkpoints) in one archive
(cd "$work" && tar czf "$OUT/runs.tar.gz" --exclude='*.pt' *)
ls -la "$OUT"
