#!/usr/bin/env bash
# Installs node-llama-cpp 3.21.1 with its prebuilt linux-x64 llama.cpp binary (~83 MB; nothing is
# built and nothing is downloaded at run time) into .cache/llamacpp (gitignored, or
# $PEFT_LLAMACPP_DIR), for the llama.cpp comparison test in tests/llamacpp. The versions, and
# through package-lock.json every transitive one, are pinned in tests/llamacpp. Does nothing when
# the pinned versions are already installed.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${PEFT_LLAMACPP_DIR:-$root/.cache/llamacpp}"
version=3.21.1

installed() {
  local f="$dest/node_modules/$1/package.json"
  [ -f "$f" ] && node -e "process.exit(require(process.argv[1]).version === process.argv[2] ? 0 : 1)" "$f" "$version"
}

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "install_llamacpp.sh: node and npm are required (Node.js >= 20)" >&2
  exit 1
fi
if installed node-llama-cpp && installed @node-llama-cpp/linux-x64 &&
   cmp -s "$root/tests/llamacpp/package-lock.json" "$dest/package-lock.json"; then
  echo "install_llamacpp.sh: node-llama-cpp $version already installed in $dest"
  exit 0
fi

mkdir -p "$dest"
cp "$root/tests/llamacpp/package.json" "$root/tests/llamacpp/package-lock.json" "$dest/"
cd "$dest"
# --ignore-scripts: no postinstall (it would try to download or build llama.cpp);
# --omit=optional: skip the CUDA/Vulkan/other-platform binaries.
npm ci --omit=optional --ignore-scripts --no-audit --no-fund
installed node-llama-cpp && installed @node-llama-cpp/linux-x64 || {
  echo "install_llamacpp.sh: node-llama-cpp $version did not install in $dest" >&2
  exit 1
}
echo "install_llamacpp.sh: node-llama-cpp $version installed in $dest"
