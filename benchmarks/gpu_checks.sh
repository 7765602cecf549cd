#!/usr/bin/env bash
# The GPU checks of docs/speed.md in one run, sized for a 15-minute device lease: the
# gpu-marked tests, the step profile, scvae against SCVI on pbmc4k (100 epochs, 2048 cells per
# step) and the throughput of both on a 200k-cell simulated file.
#
#   bash benchmarks/gpu_checks.sh fetch      # on a machine with pip and the data: fills .whl/
#                                            # and .gpu_data/ (both ignored by git, never committed)
#   bash benchmarks/gpu_checks.sh run OUT    # on the GPU machine, from the repository root
#
# The GPU image has torch, numpy, scipy, pandas, h5py, lightning and pytest but not pyro,
# anndata, scanpy or scvi-tools: `fetch` downloads those wheels (CPython 3.12, manylinux
# x86_64, without dependencies: the rest is in the image) and copies pbmc4k from
# $SCVAE_DATA_DIR (default ../shared/data), which does not travel with the repository.
set -euo pipefail
mode=${1:?usage: gpu_checks.sh fetch | run OUT}

if [[ $mode == fetch ]]; then
    mkdir -p .git/info && touch .git/info/exclude
    for ignored in /.whl/ /.gpu_data/; do
        grep -qxF "$ignored" .git/info/exclude || echo "$ignored" >>.git/info/exclude
    done
    mkdir -p .whl .gpu_data
    platforms=()
    for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 \
        manylinux2014_x86_64 manylinux1_x86_64; do
        platforms+=(--platform "$p")
    done
    python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp "${platforms[@]}" -d .whl \
        anndata==0.12.19 array-api-compat==1.16.0 donfig==0.8.1.post1 google-crc32c==1.9.0 \
        igraph==1.0.0 legacy-api-wrap==1.5 leidenalg==0.12.0 ml-collections==1.1.0 \
        mudata==0.3.10 natsort==8.4.0 numcodecs==0.16.6 pynndescent==0.7.0 pyro-api==0.1.2 \
        pyro-ppl==1.9.2 pytz==2026.6 scanpy==1.11.5 scverse-misc==0.0.3 scvi-tools==1.4.2 \
        session-info2==0.4.1 sparse==0.19.3 texttable==1.7.2 tzdata==2026.6 \
        umap-learn==0.5.12 zarr==3.1.6
    python -m pip wheel -q --no-deps docrep==0.3.2 -w .whl # published as a source archive only
    cp "${SCVAE_DATA_DIR:-../shared/data}/pbmc4k_scdcc.h5ad" .gpu_data/
    du -sh .whl .gpu_data
    exit 0
fi

out=${2:?usage: gpu_checks.sh run OUT}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 SCVAE_DATA_DIR=$PWD/.gpu_data
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_device.py 2>&1 | tee "$out/gpu_tests.txt"
python3 benchmarks/step_profile.py --device cuda --batch-sizes 128 2048 --out "$out" \
    2>&1 | grep '^|' | tee "$out/step_profile.md"
python3 benchmarks/compare_scvi.py --device cuda --batch-size 2048 --out "$out" \
    2>&1 | grep '^|' | tee "$out/compare_pbmc4k.md"
python3 data/make_large.py --cells 200000 --out .gpu_data/sim_200000.h5ad 2>/dev/null
python3 benchmarks/compare_scvi.py --device cuda --dataset sim_200000 --batch-size 2048 \
    --epochs 3 --out "$out" 2>&1 | grep '^|' | tee "$out/compare_sim200k.md"
