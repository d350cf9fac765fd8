#!/usr/bin/env bash
# Regenerates the image's lock files, per software stack (env/stacks.toml):
#
#   bash env/lock.sh [reference]   the reference stack (the default), from env/requirements-pins.txt, below
#   bash env/lock.sh current       the current stack: env/lock-current-cu130.txt (see lock_current)
#   bash env/lock.sh all           both
#   bash env/lock.sh cu118-torch   env/lock-cu118-torch.txt alone (no resolver; curl, and the index if it answers)
#
# The reference stack's files, from env/requirements-pins.txt:
#
#   env/lock-cu121.txt        every package of the CUDA 12.1 variant, torch 2.1.2 from PyPI (= its cu121 build)
#                             and its nvidia-*-cu12 wheels included
#   env/lock-cu118.txt        the CUDA 11.8 variant without torch (torch 2.1.2+cu118 bundles its CUDA libraries
#                             and lives on the PyTorch index only, not on PyPI)
#   env/lock-cu118-torch.txt  torch==2.1.2+cu118 with the sha256 the PyTorch index publishes
#
#   bash env/lock.sh          (about 15 s; needs python3 >= 3.9 and PyPI, through PIP_INDEX_URL if set)
#
# How: uv's resolver runs for the image's interpreter and platform (`--python-version 3.10 --python-platform
# x86_64-manylinux_2_31`: Ubuntu 20.04's glibc 2.31), so environment markers are evaluated for Python 3.10,
# not for the Python that runs this script (pip-compile and `pip --python-version` evaluate markers for the
# running interpreter). --generate-hashes records the sha256 of every file of each pinned release, as
# pip-compile does; pip in the image installs only a file whose hash is listed (--require-hashes).
# Each requirement is written on one line, so the Dockerfile can split off the two sdists with grep.
#
# The sdists DeepSpeed 0.13.1 and flash-attn 2.4.2 import torch in setup.py, so their metadata cannot be built
# without torch; their requirements are given to uv statically below (from their setup.py) and uv reads only
# their hashes from the index. The image builds them after torch (--no-build-isolation).
#
# Deliberate differences from env/requirements-pins.txt (the CPU test environment of the same pins):
# - test-only packages (pytest, iniconfig, pluggy, exceptiongroup) are left out;
# - nvidia-nvjitlink-cu12 is 12.1.105, CUDA 12.1's own, not the newest 12.x that pip picks unbounded;
# - pynvml is 12.0.0, the shim over nvidia-ml-py (kit's NVML binding): pynvml 11.5.0 ships its own `pynvml`
#   package that would shadow nvidia-ml-py's `pynvml` module;
# - added: flash-attn 2.4.2 (+ einops), docker (kit's host side), pip, and setuptools < 70 (torch 2.1's
#   cpp_extension, used by DeepSpeed's run-time op builds, imports pkg_resources.packaging, gone in 70).
#
# The flash-attn release wheels (GitHub releases, not PyPI) for each variant are named in the lock headers.
# Their sha256 is recorded when this script can download them (FLASH_ATTN_FETCH=1 and github.com reachable);
# otherwise the header says "unknown" and the Dockerfile builds flash-attn from the hashed sdist instead.
# The cu118 torch hash is read from the PyTorch index when it is reachable and must equal TORCH118_SHA256 below
# (the script stops otherwise: a pinned hash never changes silently); where the index is not reachable, the recorded
# TORCH118_SHA256 is written, with its provenance (two public records quoting the index's link) in the header.
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION=0.13.8
INDEX_URL="${PIP_INDEX_URL:-https://pypi.org/simple}"
TORCH_INDEX_URL="${TORCH_INDEX_URL:-https://download.pytorch.org/whl}"
FA_VERSION=2.4.2
FA_RELEASES=https://github.com/Dao-AILab/flash-attention/releases/download
# flash-attn 2.4.2 publishes wheels for CUDA 11.8 and 12.2; its own setup.py maps any torch built for 12.x to
# the cu122 wheel (CUDA 12 minor-version compatibility), and torch 2.1 from PyPI uses the pre-C++11 ABI.
fa_wheel() { echo "$FA_RELEASES/v$FA_VERSION/flash_attn-$FA_VERSION+$1torch2.1cxx11abiFALSE-cp310-cp310-linux_x86_64.whl"; }

# The sha256 that the PyTorch index publishes for torch-2.1.2+cu118-cp310-cp310-linux_x86_64.whl (its link's
# #sha256= fragment), as two independent public records quote that link (named in the lock's header below).
TORCH118_SHA256=60396358193f238888540f4a38d78485f161e28ec17fa445f0373b5350ef21f0
TORCH118_WHEEL=torch-2.1.2%2Bcu118-cp310-cp310-linux_x86_64.whl
torch_from="the recorded sha256 (the index was not reachable here)"
# torch 2.1.2+cu118's lock: the sha256 read from the index when it answers (and equal to TORCH118_SHA256, or stop),
# else the recorded one; the header names the records it comes from.
lock_torch118() {
  local page torch_sha=""
  if page="$(curl -fsSL --connect-timeout 20 --max-time 60 "$TORCH_INDEX_URL/cu118/torch/" 2>/dev/null)"; then
    torch_sha="$(grep -o "${TORCH118_WHEEL//./\\.}#sha256=[0-9a-f]\{64\}" <<<"$page" | head -n1 | sed 's/.*#sha256=//')" || true
    if [ -n "$torch_sha" ] && [ "$torch_sha" != "$TORCH118_SHA256" ]; then
      echo "lock.sh: $TORCH_INDEX_URL/cu118 publishes sha256 $torch_sha for $TORCH118_WHEEL, not the recorded" \
           "$TORCH118_SHA256; find out why before changing TORCH118_SHA256 in env/lock.sh" >&2
      return 1
    fi
    torch_from="the sha256 of the index ($TORCH_INDEX_URL/cu118), equal to the recorded one"
    [ -n "$torch_sha" ] || torch_from="the recorded sha256 (the index answered without the wheel's link)"
  fi
  { echo "# torch 2.1.2 for the CUDA 11.8 variant, from the PyTorch index (--index-url $TORCH_INDEX_URL/cu118)."
    echo "# GENERATED by env/lock.sh. The wheel is torch-2.1.2+cu118-cp310-cp310-linux_x86_64.whl; its sha256 is the one the"
    echo "# index publishes in the link's #sha256= fragment. env/lock.sh reads it from the index when the index is reachable"
    echo "# (and stops if it ever differs from the one below); where it is not (the kit's machines), it writes the recorded one."
    echo "# Provenance of the recorded sha256: two independent public records quote the index's link"
    echo "#   https://download.pytorch.org/whl/cu118/$TORCH118_WHEEL#sha256=$TORCH118_SHA256"
    echo "#   - install instructions: github.com/XuHuang441/Multi-player-Nash-Policy-Optimization, inpo_original/README.md"
    echo "#     (commit 342faafbdd95ced11731e377cb6f839ee37d9832), \"PyTorch Wheel Download\";"
    echo "#   - a resolver's debug log: github.com/xhiroga/zenn-content, articles/uv-pytorch-trouble-shooting.md"
    echo "#     (commit ef00cd236ce9c9910a9be89ee2f0806863478904, 2024-10-17), the output of"
    echo "#     \`uv add torch==2.1.2+cu118 --index-url https://download.pytorch.org/whl/cu118 --verbose\`."
    echo "# pip installs it with --require-hashes: a wrong hash can only make the build fail, never install another file."
    echo "torch==2.1.2+cu118 --hash=sha256:$TORCH118_SHA256"
  } >env/lock-cu118-torch.txt
}

STACK="${1:-reference}"
case "$STACK" in
  reference|current|all) ;;
  cu118-torch) lock_torch118; echo "lock.sh: wrote env/lock-cu118-torch.txt with $torch_from" >&2; exit 0 ;;
  *) echo "lock.sh: unknown stack '$STACK': pass reference, current or all (env/stacks.toml names them), or" \
          "cu118-torch for env/lock-cu118-torch.txt alone" >&2; exit 2 ;;
esac

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export SSL_CERT_FILE="${SSL_CERT_FILE:-${PIP_CERT:-}}"   # uv reads the CA bundle from here
[ -n "$SSL_CERT_FILE" ] || unset SSL_CERT_FILE

python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q --disable-pip-version-check "uv==$UV_VERSION"
uv="$work/venv/bin/uv"


# The current stack: the versions every GPU figure in bench/results was measured with, natively on the H200
# host (torch 2.11.0, DeepSpeed 0.19.8, transformers 5.17.0, liger-kernel 0.8.5, sentencepiece 0.2.2,
# mlperf-logging 4.1.68, no flash-attn: the runs used SDPA), for the image's Python 3.12 (Ubuntu 24.04's, as on
# that host) and glibc 2.39. torch comes from PyPI, whose torch 2.11.0 for Linux x86_64 is the CUDA 13.0 build
# (it pulls cuda-toolkit 13.0.2 and the nvidia-*-cu13 wheels), the build the figures ran (torch 2.11.0+cu130);
# so the variant is CUDA 13.0 and no separate torch lock is needed. The other libraries are the versions of
# env/requirements-dev.txt (the current CPU library set) where they install together with those.
# flash-attn is left out on purpose: PyPI has only its sdist (a multi-hour nvcc build), no release wheel exists
# for torch 2.11 with CUDA 13, and the figures were measured without it; a config that asks for it
# (model.attn = "flash_attention_2") is refused on this stack before it starts (env/stacks.toml [[need]]).
lock_current() {
  cat >"$work/in-current.txt" <<'EOF'
torch==2.11.0
deepspeed==0.19.8
transformers==5.17.0
liger-kernel==0.8.5
sentencepiece==0.2.2
mlperf-logging==4.1.68
protobuf==7.36.2
pillow==13.0.0
numpy==2.4.6
datasets==5.2.0
pyarrow==26.0.1
docker==7.2.0
typer==0.29.2
rich==15.0.0
requests==2.34.2
nvidia-ml-py==13.615.71
pip==26.0.1
setuptools==81.0.0
wheel==0.45.1
EOF
  "$uv" pip compile "$work/in-current.txt" --index-url "$INDEX_URL" \
    --python-version 3.12 --python-platform x86_64-manylinux_2_39 \
    --generate-hashes --no-annotate --no-header --quiet -o "$work/out-current.txt"
  python3 - "$work/out-current.txt" "$work/joined-current.txt" <<'EOF'
import sys
text = open(sys.argv[1]).read().replace("\\\n", " ")
lines = [" ".join(line.split()) for line in text.splitlines() if line.strip() and not line.startswith("#")]
open(sys.argv[2], "w").write("\n".join(lines) + "\n")
EOF
  grep -q '^torch==2\.11\.0 ' "$work/joined-current.txt" && grep -q '^cuda-toolkit==13\.0\.' "$work/joined-current.txt" \
    || { echo "lock.sh: the index's torch 2.11.0 is not the CUDA 13.0 build this stack expects" >&2; exit 1; }
  { echo "# The image's lock of the current stack, CUDA 13.0 variant: Python 3.12 (cp312), manylinux x86_64, glibc 2.39"
    echo "# (Ubuntu 24.04). GENERATED by \`env/lock.sh current\` from the pins in its lock_current; do not edit by hand."
    echo "# Every line is one requirement with the sha256 of each file of that release; Dockerfile.current installs it"
    echo "# with --require-hashes --no-deps: every line but deepspeed first (wheels only), then the DeepSpeed sdist"
    echo "# against the installed torch."
    echo "# stack: current"
    echo "# base-image: nvidia/cuda:13.0.2-cudnn-devel-ubuntu24.04"
    echo "# python: 3.12"
    echo "# torch-cuda: 13.0 (PyPI's torch 2.11.0 for Linux x86_64: cuda-toolkit 13.0.2, nvidia-*-cu13 wheels)"
    echo "# flash-attn: none (not in this stack: no release wheel for torch 2.11 + CUDA 13; the figures ran SDPA)"
    cat "$work/joined-current.txt"
  } >env/lock-current-cu130.txt
  echo "lock.sh: wrote env/lock-current-cu130.txt ($(grep -c '^[a-z]' env/lock-current-cu130.txt) packages)" >&2
}

if [ "$STACK" != reference ]; then
  lock_current
fi
[ "$STACK" != current ] || exit 0

cat >"$work/uv.toml" <<'EOF'
# Static metadata of the two sdists whose setup.py imports torch (from their setup.py's install_requires).
[[dependency-metadata]]
name = "deepspeed"
version = "0.13.1"
requires-dist = ["hjson", "ninja", "numpy", "packaging>=20.0", "psutil", "py-cpuinfo", "pydantic", "pynvml", "torch", "tqdm"]

[[dependency-metadata]]
name = "flash-attn"
version = "2.4.2"
requires-dist = ["torch", "einops", "packaging", "ninja"]
EOF

grep -v -E '^(pytest|iniconfig|pluggy|exceptiongroup|pynvml|nvidia-nvjitlink-cu12)==' env/requirements-pins.txt \
  >"$work/in.txt"
cat >>"$work/in.txt" <<EOF
flash-attn==$FA_VERSION
einops==0.7.0
pynvml==12.0.0
docker==7.1.0
nvidia-nvjitlink-cu12==12.1.105
pip==24.0
setuptools==69.5.1
EOF

"$uv" pip compile "$work/in.txt" --config-file "$work/uv.toml" --index-url "$INDEX_URL" \
  --python-version 3.10 --python-platform x86_64-manylinux_2_31 \
  --generate-hashes --no-annotate --no-header --quiet -o "$work/out.txt"

# One requirement per line (continuations joined).
python3 - "$work/out.txt" "$work/joined.txt" <<'EOF'
import sys
text = open(sys.argv[1]).read().replace("\\\n", " ")
lines = [" ".join(line.split()) for line in text.splitlines() if line.strip() and not line.startswith("#")]
open(sys.argv[2], "w").write("\n".join(lines) + "\n")
EOF

sha_of_url() {  # the sha256 of a downloaded file, or "unknown"
  if [ "${FLASH_ATTN_FETCH:-1}" = 1 ] && curl -fsSL --connect-timeout 20 --max-time 900 -o "$work/dl" "$1" 2>/dev/null; then
    sha256sum "$work/dl" | cut -d' ' -f1
  else
    echo unknown
  fi
}

header() {  # variant base flash-attn-variant
  cat <<EOF
# The image's lock for the CUDA $1 variant: Python 3.10 (cp310), manylinux x86_64, glibc 2.31 (Ubuntu 20.04).
# GENERATED by env/lock.sh from env/requirements-pins.txt; do not edit by hand. Every line is one requirement
# with the sha256 of each file of that release; the Dockerfile installs it with --require-hashes --no-deps.
# base-image: $2
# flash-attn-wheel: $(fa_wheel "$3") sha256:$(sha_of_url "$(fa_wheel "$3")")
EOF
}

{ header 12.1 nvidia/cuda:12.1.1-cudnn8-devel-ubuntu20.04 cu122
  echo "# The Dockerfile installs every line but deepspeed and flash-attn first (wheels only), then builds those"
  echo "# two sdists against the installed torch."
  cat "$work/joined.txt"
} >env/lock-cu121.txt

{ header 11.8 nvidia/cuda:11.8.0-cudnn8-devel-ubuntu20.04 cu118
  echo "# torch is not here: torch==2.1.2+cu118 (CUDA libraries bundled, so no nvidia-*-cu12 wheels) comes from"
  echo "# the PyTorch index, pinned in env/lock-cu118-torch.txt. Its other requirements are the same as PyPI's 2.1.2."
  grep -v -E '^(torch|nvidia-[a-z-]+-cu12)==' "$work/joined.txt"
} >env/lock-cu118.txt

lock_torch118

echo "lock.sh: wrote env/lock-cu121.txt ($(grep -c '^[a-z]' env/lock-cu121.txt) packages)," \
  "env/lock-cu118.txt ($(grep -c '^[a-z]' env/lock-cu118.txt)), env/lock-cu118-torch.txt" \
  "(torch 2.1.2+cu118 with $torch_from)" >&2
