/*
 * vdisk_native: the few Linux file calls that Node 20's fs module lacks.
 *
 *   seekData(fd, off) / seekHole(fd, off)  lseek(2) SEEK_DATA / SEEK_HOLE; -1 at ENXIO
 *   fallocate(fd, mode, off, len)          fallocate(2): 0 = allocate, 1 = punch hole,
 *                                          2 = zero range; returns 0 or -errno
 *   ofdLock(fd, type, start, len)          fcntl(F_OFD_SETLK); type 0 unlock, 1 read, 2 write;
 *                                          returns 0 or -errno
 *   ofdTest(fd, type, start, len)          fcntl(F_OFD_GETLK): 1 when a conflicting lock is
 *                                          held by another open file description, else 0
 *   syncRange(fd, off, len) -> Promise     sync_file_range(2) SYNC_FILE_RANGE_WRITE on libuv's
 *                                          pool: start the write-back of a range now (it may
 *                                          block while the device queue is full, hence the
 *                                          pool); resolves to 0 or -errno. Not durability:
 *                                          fsync still follows, with less left to write.
 *
 *   deflateCluster(buf, mode, limit, probe)  compression on the thread pool: vdisk_deflate.c
 *   zstdCluster(buf, mode, size, level)      zstd (the system's libzstd) on the pool: vdisk_zstd.c
 *   sendfileStart(sock, file, off, n, cb)    sendfile(2) to a socket on a thread: vdisk_sendfile.c
 *   sendfileCancel(job)
 *
 * The file calls are synchronous: each is one cheap system call on an already open descriptor.
 * Node's fs uses pread/pwrite, so the lseek here never disturbs its reads and writes.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <node_api.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vdisk_deflate.h"
#include "vdisk_sendfile.h"
#include "vdisk_zstd.h"

static int get_i64(napi_env env, napi_value v, int64_t *out) {
  double d;
  if (napi_get_value_double(env, v, &d) != napi_ok) return 0;
  *out = (int64_t)d;
  return 1;
}

static napi_value num(napi_env env, double d) {
  napi_value r;
  napi_create_double(env, d, &r);
  return r;
}

static napi_value fail(napi_env env, const char *msg) {
  napi_throw_type_error(env, NULL, msg);
  return NULL;
}

static napi_value do_seek(napi_env env, napi_callback_info info, int whence) {
  size_t argc = 2;
  napi_value argv[2];
  int64_t fd, off;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 2 || !get_i64(env, argv[0], &fd) || !get_i64(env, argv[1], &off)) return fail(env, "seek(fd, off)");
  off_t r = lseek((int)fd, (off_t)off, whence);
  if (r < 0) return num(env, errno == ENXIO ? -1.0 : -(double)errno - 1000.0);
  return num(env, (double)r);
}

static napi_value seek_data(napi_env env, napi_callback_info info) { return do_seek(env, info, SEEK_DATA); }
static napi_value seek_hole(napi_env env, napi_callback_info info) { return do_seek(env, info, SEEK_HOLE); }

static napi_value do_fallocate(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  int64_t fd, mode, off, len;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 4 || !get_i64(env, argv[0], &fd) || !get_i64(env, argv[1], &mode) || !get_i64(env, argv[2], &off) ||
      !get_i64(env, argv[3], &len))
    return fail(env, "fallocate(fd, mode, off, len)");
  int m = 0;
  if (mode == 1) m = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
  else if (mode == 2) m = FALLOC_FL_ZERO_RANGE;
  int r = fallocate((int)fd, m, (off_t)off, (off_t)len);
  return num(env, r < 0 ? -(double)errno : 0.0);
}

static napi_value do_lock(napi_env env, napi_callback_info info, int test) {
  size_t argc = 4;
  napi_value argv[4];
  int64_t fd, type, start, len;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 4 || !get_i64(env, argv[0], &fd) || !get_i64(env, argv[1], &type) || !get_i64(env, argv[2], &start) ||
      !get_i64(env, argv[3], &len))
    return fail(env, "lock(fd, type, start, len)");
  struct flock fl;
  memset(&fl, 0, sizeof fl);
  fl.l_whence = SEEK_SET;
  fl.l_start = (off_t)start;
  fl.l_len = (off_t)len;
  fl.l_type = type == 0 ? F_UNLCK : type == 1 ? F_RDLCK : F_WRLCK;
  int r = fcntl((int)fd, test ? F_OFD_GETLK : F_OFD_SETLK, &fl);
  if (r < 0) return num(env, -(double)errno);
  if (test) return num(env, fl.l_type == F_UNLCK ? 0.0 : 1.0);
  return num(env, 0.0);
}

static napi_value ofd_lock(napi_env env, napi_callback_info info) { return do_lock(env, info, 0); }
static napi_value ofd_test(napi_env env, napi_callback_info info) { return do_lock(env, info, 1); }

typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  int fd;
  int64_t off, len;
  int result;
} range_job;

static void range_execute(napi_env env, void *data) {
  (void)env;
  range_job *j = data;
  j->result = sync_file_range(j->fd, (off64_t)j->off, (off64_t)j->len, SYNC_FILE_RANGE_WRITE) < 0 ? -errno : 0;
}

static void range_complete(napi_env env, napi_status st, void *data) {
  range_job *j = data;
  napi_value v;
  napi_create_int32(env, st == napi_ok ? j->result : -EIO, &v);
  napi_resolve_deferred(env, j->deferred, v);
  napi_delete_async_work(env, j->work);
  free(j);
}

static napi_value sync_range(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  int64_t fd, off, len;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 3 || !get_i64(env, argv[0], &fd) || !get_i64(env, argv[1], &off) || !get_i64(env, argv[2], &len) ||
      fd < 0 || off < 0 || len < 0)
    return fail(env, "syncRange(fd, off, len)");
  range_job *j = calloc(1, sizeof *j);
  if (j == NULL) return fail(env, "syncRange: out of memory");
  j->fd = (int)fd;
  j->off = off;
  j->len = len;
  napi_value promise, name;
  napi_create_promise(env, &j->deferred, &promise);
  napi_create_string_utf8(env, "vdisk:syncRange", NAPI_AUTO_LENGTH, &name);
  napi_create_async_work(env, NULL, name, range_execute, range_complete, j, &j->work);
  napi_queue_async_work(env, j->work);
  return promise;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"seekData", NULL, seek_data, NULL, NULL, NULL, napi_default, NULL},
      {"seekHole", NULL, seek_hole, NULL, NULL, NULL, napi_default, NULL},
      {"fallocate", NULL, do_fallocate, NULL, NULL, NULL, napi_default, NULL},
      {"ofdLock", NULL, ofd_lock, NULL, NULL, NULL, napi_default, NULL},
      {"ofdTest", NULL, ofd_test, NULL, NULL, NULL, napi_default, NULL},
      {"syncRange", NULL, sync_range, NULL, NULL, NULL, napi_default, NULL},
      {"deflateCluster", NULL, vdisk_deflate_cluster, NULL, NULL, NULL, napi_default, NULL},
      {"zstdCluster", NULL, vdisk_zstd_cluster, NULL, NULL, NULL, napi_default, NULL},
      {"sendfileStart", NULL, vdisk_sendfile_start, NULL, NULL, NULL, napi_default, NULL},
      {"sendfileCancel", NULL, vdisk_sendfile_cancel, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
