#!/usr/bin/env bash
# Sets up a fresh Debian 12 / Ubuntu 22.04+ machine for lvlm-var: the system packages
# GStreamer needs (only those missing), a virtual environment and the project with its
# extras. Idempotent: a second run with nothing changed spends a few seconds.
#
#   scripts/install.sh [VENV]          (VENV defaults to .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_VERSION=2.13.0
LLAMA_CPP_VERSION=0.3.36
# Portable llama.cpp build: a native build enables AMX on some Xeons and crashes on the first decode.
LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"

APT_PACKAGES=(
  gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good
  gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav gstreamer1.0-rtsp
  gir1.2-gstreamer-1.0 gir1.2-gst-plugins-base-1.0 gir1.2-gst-rtsp-server-1.0
  libgirepository1.0-dev libcairo2-dev pkg-config python3-venv systemd
  mosquitto  # the MQTT broker the tests start (the service itself needs only a broker somewhere)
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> installing system packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

stamp="$VENV/.lvlm-var-installed"
want=$(cat pyproject.toml scripts/install.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

[ -x "$VENV/bin/python" ] || { echo "==> creating $VENV"; "$PYTHON" -m venv "$VENV"; }
PIP=("$VENV/bin/python" -m pip install -q)
echo "==> installing torch $TORCH_VERSION (CPU build)"
"${PIP[@]}" "torch==$TORCH_VERSION"
if ! "$VENV/bin/python" -c "import llama_cpp, sys; sys.exit(llama_cpp.__version__ != '$LLAMA_CPP_VERSION')" 2>/dev/null; then
  echo "==> building llama-cpp-python $LLAMA_CPP_VERSION (portable CPU build; a few minutes the first time)"
  CMAKE_ARGS="$LLAMA_CMAKE_ARGS" "${PIP[@]}" "llama-cpp-python==$LLAMA_CPP_VERSION"
fi
echo "==> installing lvlm-var with extras cpu,train,dev"
"${PIP[@]}" -e ".[cpu,train,dev]"
echo "$want" > "$stamp"
