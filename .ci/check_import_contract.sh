#!/usr/bin/env bash
# Import contract, in fresh interpreters: after `pip install .` and after `pip install -e .` on stock
# diffsynth, `from diffsynth.pipelines.z_image_L2P import ZImagePipeline, ModelConfig` (and the Qwen-Image and
# FLUX.2 equivalents) must work; with the installed stub files deleted, the meta-path alias of
# `import diffsynth_l2p` must still provide them.
#
# Each throwaway venv gets a private copy of the diffsynth package (our wheel writes into its directory,
# so it must not be the project's) and reaches every other dependency (torch, transformers, ...) in the
# project's .venv through a .pth line: nothing is downloaded, nothing in .venv changes. ~30 s.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

DEPS="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
PIP=("$PY" -m pip --disable-pip-version-check)

make_venv() {  # make_venv NAME -> prints the venv's site-packages
    local venv="$WORK/$1" site
    "$PY" -m venv --without-pip "$venv"
    site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    cp -r "$DEPS/diffsynth" "$DEPS"/diffsynth-*.dist-info "$site/"
    echo "$DEPS" > "$site/zz_project_venv_deps.pth"
    echo "$site"
}

install() {  # install NAME PIP-ARGS...
    local venv="$WORK/$1"; shift
    "${PIP[@]}" --python "$venv/bin/python" install --quiet --no-index --no-deps --no-build-isolation "$@"
}

check_import() {  # check_import NAME EXPECTED-DIR [PRELUDE]: import in a fresh interpreter, outside the source tree
    local venv="$WORK/$1" expected="$2" prelude="${3:-}"
    (cd "$WORK" && DIFFSYNTH_SKIP_DOWNLOAD=True "$venv/bin/python" -c "
${prelude}
from diffsynth.pipelines.z_image_L2P import ZImagePipeline, ModelConfig
from diffsynth.pipelines.qwen_image_L2P import QwenImagePipeline
from diffsynth.pipelines.flux2_image_L2P import Flux2ImagePipeline
import diffsynth_l2p
assert ZImagePipeline.__module__ == 'diffsynth_l2p.pipelines.z_image_l2p', ZImagePipeline.__module__
assert QwenImagePipeline.__module__ == 'diffsynth_l2p.pipelines.qwen_image_l2p', QwenImagePipeline.__module__
assert Flux2ImagePipeline.__module__ == 'diffsynth_l2p.pipelines.flux2_l2p', Flux2ImagePipeline.__module__
assert ModelConfig.__module__.startswith('diffsynth.core'), ModelConfig.__module__
assert diffsynth_l2p.__file__.startswith('${expected}'), diffsynth_l2p.__file__
print('  ok:', ZImagePipeline.__name__, 'from', diffsynth_l2p.__file__)
")
}

echo "import contract: regular install (pip install .)"
# Build from a copy so the in-tree build leaves no build/ directory in the checkout.
mkdir "$WORK/src"
for item in setup.py pyproject.toml setup.cfg MANIFEST.in README.md LICENSE diffsynth diffsynth_l2p; do
    [ -e "$ROOT/$item" ] && cp -r "$ROOT/$item" "$WORK/src/"
done
site="$(make_venv regular)"
install regular "$WORK/src"
STUBS=(z_image_L2P qwen_image_L2P flux2_image_L2P)
for stub in "${STUBS[@]}"; do
    [ -f "$site/diffsynth/pipelines/$stub.py" ] || { echo "the wheel did not install diffsynth/pipelines/$stub.py"; exit 1; }
done
check_import regular "$site"

echo "import contract: meta-path alias when the stub files are missing"
for stub in "${STUBS[@]}"; do rm "$site/diffsynth/pipelines/$stub.py"; done
check_import regular "$site" "import diffsynth_l2p"

echo "import contract: editable install (pip install -e .)"
make_venv editable >/dev/null
install editable -e "$ROOT"
check_import editable "$ROOT"
echo "import contract: all passed"
