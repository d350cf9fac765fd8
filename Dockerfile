# The kit's image: the LLaVA-1.5-7B case's reference stack (torch 2.1.2, DeepSpeed 0.13.1, transformers 4.37.2,
# flash-attn 2.4.2) on Python 3.10 and Ubuntu 20.04, every Python package pinned with hashes in env/lock-*.txt.
#
# Two variants; BASE_IMAGE and CUDA_VARIANT go together (each lock names its base in a "# base-image:" line):
#   CUDA_VARIANT=12.1  BASE_IMAGE=nvidia/cuda:12.1.1-cudnn8-devel-ubuntu20.04  driver >= 525.60.13 (the default)
#   CUDA_VARIANT=11.8  BASE_IMAGE=nvidia/cuda:11.8.0-cudnn8-devel-ubuntu20.04  driver >= 450.80.02 (e.g. 470.141.10,
#                      through minor-version compatibility); needs env/lock-cu118-torch.txt hashed (env/lock.sh)
#
#   docker build -t kit:cu121 --build-arg KIT_VERSION=0.1.0 \
#     --build-arg KIT_LOCK_SHA256="$(sha256sum env/lock-cu121.txt | cut -d' ' -f1)" .
#
# Behind a mirror or a TLS-inspecting proxy: --build-arg PIP_INDEX_URL=... (and PIP_EXTRA_INDEX_URL,
# TORCH_INDEX_URL, DEADSNAKES_URL), and --build-arg CA_BUNDLE=path/in/context/proxy-ca.crt: that certificate is
# added to the system store, which apt, curl and pip (PIP_CERT) then use.
ARG BASE_IMAGE=nvidia/cuda:12.1.1-cudnn8-devel-ubuntu20.04
FROM ${BASE_IMAGE}

ARG BASE_IMAGE
ARG CUDA_VARIANT=12.1
ARG CA_BUNDLE=""
ARG PIP_INDEX_URL=https://pypi.org/simple
ARG PIP_EXTRA_INDEX_URL=""
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu118
# Python 3.10: Ubuntu 20.04 ships 3.8, so 3.10 comes from the deadsnakes PPA (Ubuntu builds, apt-managed, with
# python3.10-dev for DeepSpeed's run-time op builds). Its signing key is fetched by fingerprint and checked.
ARG DEADSNAKES_URL=https://ppa.launchpadcontent.net/deadsnakes/ppa/ubuntu
ARG DEADSNAKES_KEY=F23C5A6CF475977595C89F51BA6932366A755776
ARG KEYSERVER_URL=https://keyserver.ubuntu.com
# flash-attn: the prebuilt release wheel when its sha256 is known (these ARGs, else the lock's
# "# flash-attn-wheel:" line); otherwise built from the hashed PyPI sdist with MAX_JOBS compile jobs
# (each nvcc job can take several GiB of memory: an unlimited build is killed by the OOM killer).
ARG FLASH_ATTN_WHEEL_URL=""
ARG FLASH_ATTN_WHEEL_SHA256=""
ARG MAX_JOBS=4
ARG KIT_UID=1000
ARG KIT_GID=1000
ARG KIT_VERSION=unknown
ARG KIT_LOCK_SHA256=unknown

LABEL org.opencontainers.image.title="kit" \
      org.opencontainers.image.description="kit: LLaVA-1.5-7B training benchmark (torch 2.1.2, DeepSpeed 0.13.1, transformers 4.37.2, flash-attn 2.4.2)" \
      org.opencontainers.image.version="${KIT_VERSION}" \
      org.opencontainers.image.base.name="${BASE_IMAGE}" \
      kit.version="${KIT_VERSION}" \
      kit.lock.sha256="${KIT_LOCK_SHA256}" \
      kit.cuda="${CUDA_VARIANT}"

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/kit/venv \
    PATH=/opt/kit/venv/bin:${PATH}

# The CA bundle, when given, is a file in the build context; .dockerignore is only a file that always exists,
# so the COPY works with CA_BUNDLE empty.
COPY .dockerignore ${CA_BUNDLE} /tmp/kit-ca/

# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl gnupg \
 && if [ -n "${CA_BUNDLE}" ]; then \
      cp "/tmp/kit-ca/$(basename "${CA_BUNDLE}")" /usr/local/share/ca-certificates/kit-build-ca.crt \
      && update-ca-certificates; \
    fi \
 && rm -rf /tmp/kit-ca \
 && GNUPGHOME="$(mktemp -d)" && export GNUPGHOME \
 && curl -fsSL "${KEYSERVER_URL}/pks/lookup?op=get&options=mr&search=0x${DEADSNAKES_KEY}" \
      | gpg --dearmor -o /usr/share/keyrings/deadsnakes.gpg \
 && gpg --show-keys --with-colons /usr/share/keyrings/deadsnakes.gpg | grep -q "^fpr:::::::::${DEADSNAKES_KEY}:" \
 && echo "deb [signed-by=/usr/share/keyrings/deadsnakes.gpg] ${DEADSNAKES_URL} focal main" \
      > /etc/apt/sources.list.d/deadsnakes.list \
 && apt-get update \
 && apt-get install -y --no-install-recommends python3.10 python3.10-dev python3.10-venv git \
 && rm -rf /var/lib/apt/lists/* "${GNUPGHOME}" \
 && python3.10 -m venv "${VIRTUAL_ENV}"

# The locks; only the chosen variant's is used. Changing a lock rebuilds from here on, nothing earlier.
COPY env/lock-cu121.txt env/lock-cu118.txt env/lock-cu118-torch.txt /opt/kit/env/
WORKDIR /opt/kit/env

# pip, setuptools and wheel from the lock; torch (11.8: from the PyTorch index, refused unless hashed); then every
# other wheel. --no-deps: the lock is the whole closure, and `pip check` below proves it consistent.
RUN case "${CUDA_VARIANT}" in 12.1) v=cu121 ;; 11.8) v=cu118 ;; \
      *) echo "CUDA_VARIANT must be 12.1 or 11.8, not '${CUDA_VARIANT}'" >&2; exit 1 ;; esac \
 && echo "${v}" > variant \
 && grep -E '^(pip|setuptools|wheel)==' "lock-${v}.txt" > /tmp/boot.txt \
 && python -m pip install --require-hashes --no-deps --only-binary=:all: -r /tmp/boot.txt \
 && if [ "${v}" = cu118 ]; then \
      grep -q -E '^torch==2\.1\.2\+cu118 .*--hash=sha256:[0-9a-f]{64}' lock-cu118-torch.txt \
        || { echo "env/lock-cu118-torch.txt has no sha256 for torch 2.1.2+cu118: run env/lock.sh where" \
                  "${TORCH_INDEX_URL} is reachable, then build again" >&2; exit 1; }; \
      python -m pip install --require-hashes --no-deps --only-binary=:all: \
        --index-url "${TORCH_INDEX_URL}" -r lock-cu118-torch.txt; \
    fi \
 && grep -v -E '^(deepspeed|flash-attn|pip|setuptools|wheel)==' "lock-${v}.txt" | grep -v '^#' > /tmp/wheels.txt \
 && python -m pip install --require-hashes --no-deps --only-binary=:all: -r /tmp/wheels.txt \
 && rm -f /tmp/boot.txt /tmp/wheels.txt

# DeepSpeed 0.13.1 is an sdist whose setup.py imports torch: built against the installed torch, ops JIT-compiled
# at run time (DS_BUILD_OPS=0).
RUN grep -E '^deepspeed==' "lock-$(cat variant).txt" > /tmp/ds.txt \
 && DS_BUILD_OPS=0 python -m pip install --require-hashes --no-deps --no-build-isolation -r /tmp/ds.txt \
 && rm -f /tmp/ds.txt

# hadolint ignore=DL3013
RUN lock="lock-$(cat variant).txt" \
 && url="${FLASH_ATTN_WHEEL_URL}" && sha="${FLASH_ATTN_WHEEL_SHA256}" \
 && if [ -z "${url}" ]; then \
      line="$(grep -E '^# flash-attn-wheel: ' "${lock}")"; \
      url="$(echo "${line}" | cut -d' ' -f3)"; sha="$(echo "${line}" | cut -d' ' -f4 | sed 's/^sha256://')"; \
      [ "${sha}" != unknown ] || sha=""; \
    elif [ -z "${sha}" ]; then \
      echo "FLASH_ATTN_WHEEL_URL needs FLASH_ATTN_WHEEL_SHA256: an unverified wheel is never installed" >&2; exit 1; \
    fi \
 && if [ -n "${sha}" ]; then \
      whl="/tmp/$(basename "${url}" | sed 's/%2B/+/g')"; \
      curl -fsSL -o "${whl}" "${url}" \
      && echo "${sha}  ${whl}" | sha256sum -c - \
      && python -m pip install --no-deps "${whl}" \
      && rm -f "${whl}"; \
    else \
      echo "flash-attn: no verified release wheel; building the locked sdist with MAX_JOBS=${MAX_JOBS}" >&2; \
      grep -E '^flash-attn==' "${lock}" > /tmp/fa.txt \
      && FLASH_ATTENTION_FORCE_BUILD=TRUE MAX_JOBS="${MAX_JOBS}" \
           python -m pip install --require-hashes --no-deps --no-build-isolation -r /tmp/fa.txt \
      && rm -f /tmp/fa.txt; \
    fi \
 && python -m pip check

# The kit itself, last: a source change rebuilds only this layer.
COPY pyproject.toml README.md /opt/kit/src/
COPY kit /opt/kit/src/kit
COPY cases /opt/kit/src/cases
WORKDIR /opt/kit/src
RUN python -m pip install --no-deps --no-build-isolation . \
 && rm -rf build ./*.egg-info \
 && kit --version

RUN groupadd --gid "${KIT_GID}" kit \
 && useradd --uid "${KIT_UID}" --gid "${KIT_GID}" --create-home --shell /bin/bash kit \
 && mkdir -p /workspace /data /models /results \
 && chown kit:kit /workspace /results
USER ${KIT_UID}:${KIT_GID}
WORKDIR /workspace
CMD ["kit", "--help"]
