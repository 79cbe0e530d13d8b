#!/usr/bin/env bash
# Installs what the tests need from Debian: the oracle (qemu-img, qemu-io, qemu-nbd), the
# registry's clients (openstack, glance) for the end-to-end tests of `vdisk serve`, and bzip2 and
# dmg2img for dmg images with bzip2 chunks (which Debian's qemu-img cannot read), and the real
# servers the registry's conformance suite runs on (src/server/conformance.test.ts): PostgreSQL
# (initdb/pg_ctl, a throwaway cluster on loopback) and Ceph (mon + memstore OSD + radosgw, an S3
# endpoint on loopback), tempest and Glance's metadefs, and Chromium for the web dashboard's
# browser tests, and the NBD clients that `vdisk nbd` is tested with beside qemu-nbd (nbdinfo,
# nbdcopy, nbdsh's Python binding, nbdkit). Nothing is started here; the tests start and stop them.
# Idempotent and fast when everything is there.
set -euo pipefail
need=()
command -v qemu-img >/dev/null 2>&1 || need+=(qemu-utils)
# qemu-img's curl driver (http/https sources: src/protocols/http.test.ts compares vdisk with it)
# and nginx serving images on loopback for those tests and the bench.
ls /usr/lib/*/qemu/block-curl.so >/dev/null 2>&1 || need+=(qemu-block-extra)
command -v nginx >/dev/null 2>&1 || need+=(nginx-light)
command -v qemu-io >/dev/null 2>&1 || need+=(qemu-utils)
command -v qemu-nbd >/dev/null 2>&1 || need+=(qemu-utils)
# `vdisk nbd` (src/nbd/*.test.ts, src/cli/cmd/nbd.test.ts, the bench): libnbd's tools and its
# Python binding (Debian's python3, /usr/bin/python3: nbdsh runs `python3 -m nbd`), nbdkit.
command -v nbdinfo >/dev/null 2>&1 || need+=(libnbd-bin)
command -v nbdcopy >/dev/null 2>&1 || need+=(libnbd-bin)
/usr/bin/python3 -c 'import nbd' >/dev/null 2>&1 || need+=(python3-libnbd)
command -v nbdkit >/dev/null 2>&1 || need+=(nbdkit)
command -v openstack >/dev/null 2>&1 || need+=(python3-openstackclient)
command -v glance >/dev/null 2>&1 || need+=(python3-glanceclient)
# mkfs.xfs: a loop-mounted XFS, where convert's reflinks and copy offloading (-C) are tested.
command -v mkfs.xfs >/dev/null 2>&1 || need+=(xfsprogs)
command -v bzip2 >/dev/null 2>&1 || need+=(bzip2)
command -v dmg2img >/dev/null 2>&1 || need+=(dmg2img)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v runuser >/dev/null 2>&1 || need+=(util-linux)
command -v ceph-mon >/dev/null 2>&1 || need+=(ceph-mon)
command -v monmaptool >/dev/null 2>&1 || need+=(ceph-base)
command -v ceph-osd >/dev/null 2>&1 || need+=(ceph-osd)
command -v radosgw >/dev/null 2>&1 || need+=(radosgw)
command -v radosgw-admin >/dev/null 2>&1 || need+=(ceph-common)
# Glance's conformance suite (src/server/tempest.test.ts), and Glance's metadata definition
# files that `vdisk serve` loads as glance-manage does (glance-common puts them in
# /usr/share/glance-common/metadefs and /etc/glance/metadefs).
command -v tempest >/dev/null 2>&1 || need+=(tempest)
[ -d /usr/share/glance-common/metadefs ] || need+=(glance-common)
# The real Glance 25, side by side with the metadefs API (src/server/test/glance.ts).
command -v glance-api >/dev/null 2>&1 || need+=(glance-api)
command -v ceph >/dev/null 2>&1 || need+=(ceph-common)
# The dashboard's end-to-end tests drive Debian's Chromium with playwright-core.
[ -x /usr/bin/chromium ] || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${need[@]}" | sort -u) >/dev/null
fi
qemu-img --version | head -1
