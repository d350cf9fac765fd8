#!/usr/bin/env bash
# Runs inside a container of the deps image, as root, with the kit's sources mounted read-only at /ctx/src (see
# .ci/test-image.sh, which commits the result as one image layer): the kit from the working tree, installed into
# the image's venv, and a world-writable /workspace to start in.
set -euo pipefail
export PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_CERT=/opt/kit/ca.crt
rm -rf /opt/kit/src
cp -r /ctx/src /opt/kit/src
cd /opt/kit/src
/opt/kit/venv/bin/python -m pip install -q --no-deps --no-build-isolation .
rm -rf build ./*.egg-info
/opt/kit/venv/bin/kit --version
mkdir -p /workspace && chmod 1777 /workspace
rm -rf /root/.cache /tmp/* /var/tmp/*
