#!/usr/bin/env bash
# Installs what the tests need from Debian: the oracle (qemu-img, qemu-io, qemu-nbd), bzip2 and
# dmg2img for dmg images with bzip2 chunks (which Debian's qemu-img cannot read), and the
# registry's clients (openstack, glance) for the end-to-end tests of `vdisk serve`.
# Idempotent and fast when everything is there.
set -euo pipefail
need=()
command -v qemu-img >/dev/null 2>&1 || need+=(qemu-utils)
command -v qemu-io >/dev/null 2>&1 || need+=(qemu-utils)
command -v bzip2 >/dev/null 2>&1 || need+=(bzip2)
command -v dmg2img >/dev/null 2>&1 || need+=(dmg2img)
command -v openstack >/dev/null 2>&1 || need+=(python3-openstackclient)
command -v glance >/dev/null 2>&1 || need+=(python3-glanceclient)
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${need[@]}" | sort -u) >/dev/null
fi
qemu-img --version | head -1
