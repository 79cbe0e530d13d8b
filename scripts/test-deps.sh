#!/usr/bin/env bash
# Installs what the tests need from Debian (the oracle: qemu-img, qemu-io, qemu-nbd).
set -euo pipefail
need=()
command -v qemu-img >/dev/null 2>&1 || need+=(qemu-utils)
command -v qemu-io >/dev/null 2>&1 || need+=(qemu-utils)
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends qemu-utils >/dev/null
fi
qemu-img --version | head -1
