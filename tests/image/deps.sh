#!/usr/bin/env bash
# Runs inside a container of the Debian base, as root, with the context mounted read-only at /ctx (see
# .ci/test-image.sh, which commits the result as one image layer): a C++ compiler and Python headers, a venv with
# the torch CPU wheel, env/requirements-dev.txt, and DeepSpeed with its CPU shared-memory collective compiled ahead
# of time (as ops are in a CUDA devel image), so no container has to build it at start-up or write into the image.
set -euo pipefail
DEEPSPEED=deepspeed==0.19.8
export DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_CERT=/opt/kit/ca.crt

apt-get update -qq
apt-get install -y -qq --no-install-recommends g++ python3-dev >/dev/null
rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb

mkdir -p /opt/kit
cp /ctx/ca.crt /opt/kit/ca.crt   # pip behind a TLS-inspecting proxy, as on the machines that build this
python3 -m venv /opt/kit/venv
py=/opt/kit/venv/bin/python
"$py" -m pip install -q /ctx/wheels/torch-*.whl
"$py" -m pip install -q -r /ctx/requirements-dev.txt
DS_ACCELERATOR=cpu DS_BUILD_OPS=0 DS_BUILD_SHM_COMM=1 "$py" -m pip install -q --no-build-isolation "$DEEPSPEED"
"$py" -c "import deepspeed.ops.comm.deepspeed_shm_comm_op"
rm -rf /root/.cache /tmp/* /var/tmp/*
