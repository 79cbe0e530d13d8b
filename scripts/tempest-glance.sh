#!/bin/bash
# The oracle's count for tempest/tempest-multistore.conf: Debian's real Glance 25 (two file
# stores as enabled_backends, the image cache, copy-image) behind Debian's Keystone 22, both on
# loopback in a temporary directory, and tempest 33's image v2 suite run against them with the
# configuration src/server/tempest.test.ts uses against `vdisk serve` (same conf file, same
# accounts, `--exclude-regex metadefs` as there). Prints tempest's totals; leaves nothing
# running. Needs root and the packages glance-api, keystone, tempest, python3-openstackclient
# (apt-get install keystone brings uwsgi and its python3 plugin).
#
#   bash scripts/tempest-glance.sh [EXTRA TEMPEST ARGS…]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
W=$(mktemp -d /tmp/vdisk-glance-tempest-XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 1
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  [ -n "${KEEP:-}" ] || rm -rf "$W"
}
trap cleanup EXIT
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
KP=$(port); GP=$(port); FP=$(port)
K=http://127.0.0.1:$KP
G=http://127.0.0.1:$GP
mkdir -p "$W"/keystone "$W"/glance/{fast,cold,staging,tasks,cache} "$W"/files "$W"/ws/{etc,logs,tmp}

# --- Keystone 22 (sqlite in WAL mode, fernet tokens; uwsgi, `Connection: close`)
cat > "$W/keystone/keystone.conf" <<EOF
[DEFAULT]
log_file = $W/keystone/keystone.log
[database]
connection = sqlite:///$W/keystone/keystone.db
[token]
provider = fernet
[fernet_tokens]
key_repository = $W/keystone/fernet
[fernet_receipts]
key_repository = $W/keystone/fernet-receipts
[credential]
key_repository = $W/keystone/credential
EOF
km() { keystone-manage --config-file "$W/keystone/keystone.conf" "$@"; }
km db_sync
python3 -c "import sqlite3;sqlite3.connect('$W/keystone/keystone.db').execute('PRAGMA journal_mode=WAL')"
km fernet_setup --keystone-user root --keystone-group root
km fernet_rotate --keystone-user root --keystone-group root >/dev/null 2>&1 || true
mkdir -p "$W/keystone/fernet-receipts"
km credential_setup --keystone-user root --keystone-group root
km bootstrap --bootstrap-password admin-pw --bootstrap-admin-url "$K/v3" \
  --bootstrap-internal-url "$K/v3" --bootstrap-public-url "$K/v3" --bootstrap-region-id RegionOne
OS_KEYSTONE_CONFIG_FILES="$W/keystone/keystone.conf" uwsgi --plugin python3 --master --processes 2 \
  --http-socket "127.0.0.1:$KP" --wsgi-file /usr/bin/keystone-wsgi-public \
  --add-header 'Connection: close' --die-on-term --logto "$W/keystone/uwsgi.log" &
pids+=($!)
for _ in $(seq 120); do curl -fs "$K/v3" >/dev/null && break; sleep 0.5; done
export OS_AUTH_URL=$K/v3 OS_USERNAME=admin OS_PASSWORD=admin-pw OS_PROJECT_NAME=admin \
  OS_USER_DOMAIN_NAME=Default OS_PROJECT_DOMAIN_NAME=Default OS_IDENTITY_API_VERSION=3
os() { openstack "$@" >/dev/null; }
os project create service
os user create --project service --password glance-pw glance
os role add --project service --user glance admin
os service create --name glance image
for i in public internal admin; do os endpoint create --region RegionOne image "$i" "$G"; done
: > "$W/ws/etc/accounts.yaml"
for i in 1 2 3 4 5 6; do
  os project create "tempest-p$i"
  os user create --project "tempest-p$i" --password "tempest-pw$i" "tempest-u$i"
  roles="member reader"; [ "$i" -gt 4 ] && roles="admin member reader"
  for r in $roles; do os role add --project "tempest-p$i" --user "tempest-u$i" "$r"; done
  {
    echo "- username: 'tempest-u$i'"
    echo "  project_name: 'tempest-p$i'"
    echo "  password: 'tempest-pw$i'"
    echo "  user_domain_name: 'Default'"
    echo "  project_domain_name: 'Default'"
    echo "  roles: [$(echo "$roles" | sed "s/\([a-z]*\)/'\1'/g; s/ /, /g")]"
    [ "$i" -gt 4 ] && echo "  types: ['admin']"
    true
  } >> "$W/ws/etc/accounts.yaml"
done

# --- Glance 25: two file stores, the image cache, copy-image, Keystone auth
cat > "$W/glance/glance-api.conf" <<EOF
[DEFAULT]
bind_host = 127.0.0.1
bind_port = $GP
# One worker: two on one sqlite file answer 500 'database is locked' now and then.
workers = 1
log_file = $W/glance/api.log
# In name order: Glance's `stores` lists the stores in the order the import wrote them, and
# tempest's waiter compares it with the sorted ids (in the order fast, cold Glance never
# matches and MultiStoresImportImagesTest times out; vdisk sorts `stores` itself).
enabled_backends = cold:file, fast:file
enabled_import_methods = [glance-direct,web-download,copy-image]
image_cache_dir = $W/glance/cache
[database]
connection = sqlite:///$W/glance/glance.sqlite
[paste_deploy]
flavor = keystone+cachemanagement
[keystone_authtoken]
www_authenticate_uri = $K
auth_url = $K
auth_type = password
project_domain_name = Default
user_domain_name = Default
project_name = service
username = glance
password = glance-pw
[glance_store]
default_backend = fast
[fast]
filesystem_store_datadir = $W/glance/fast
store_description = default file store
[cold]
filesystem_store_datadir = $W/glance/cold
store_description = second file store
[os_glance_staging_store]
filesystem_store_datadir = $W/glance/staging
[os_glance_tasks_store]
filesystem_store_datadir = $W/glance/tasks
[import_filtering_opts]
# Debian's Glance 25.1.0-2+deb12u5 refuses loopback addresses unless allowed_hosts names them,
# and resolves the host when the import is asked (so tempest's does-not.exist is a 400 there).
allowed_hosts = [127.0.0.1]
allowed_ports = [80,443,$FP]
EOF
glance-manage --config-file "$W/glance/glance-api.conf" db_sync >/dev/null 2>&1
python3 -c "import sqlite3;sqlite3.connect('$W/glance/glance.sqlite').execute('PRAGMA journal_mode=WAL')"
glance-api --config-file "$W/glance/glance-api.conf" >/dev/null 2>&1 &
pids+=($!)
for _ in $(seq 180); do curl -fs "$G/versions" >/dev/null && break; sleep 0.5; done

# --- web-download's source, as the vdisk run has it
head -c 65536 /dev/urandom > "$W/files/image.raw"
(cd "$W/files" && exec python3 -m http.server --bind 127.0.0.1 "$FP" >/dev/null 2>&1) &
pids+=($!)

# --- tempest, the same configuration as against vdisk
sed -e "s|@URL@|$K|g" -e "s|@WORKSPACE@|$W/ws|g" -e "s|@HTTP_IMAGE@|http://127.0.0.1:$FP/image.raw|g" \
  "$here/tempest/tempest-multistore.conf" > "$W/ws/etc/tempest.conf"
printf '[DEFAULT]\ntest_path=%s/test_discover\ntop_dir=%s\n' \
  /usr/lib/python3/dist-packages/tempest /usr/lib/python3/dist-packages/tempest > "$W/ws/.stestr.conf"
cd "$W/ws"
TEMPEST_CONFIG_DIR="$W/ws/etc" TEMPEST_CONFIG=tempest.conf TMPDIR="$W/ws/tmp" \
  tempest run --concurrency 2 --regex '^tempest\.api\.image\.v2' --exclude-regex metadefs "$@" \
  > "$W/tempest.out" 2>&1 || true
grep -E '\.\.\. (FAILED|SKIPPED)' "$W/tempest.out" || true
sed -n '/^Totals/,/^ - Failed/p' "$W/tempest.out"
