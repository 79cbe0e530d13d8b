/*
 * copyRange(inFd, inOff, outFd, outOff, len, mode) -> Promise<number>
 *
 * Bytes [inOff, inOff + len) of one file to [outOff, outOff + len) of another inside the
 * kernel, on libuv's thread pool:
 *   mode 0, clone: ioctl(FICLONERANGE). The target shares the source's blocks (a reflink on
 *     XFS, btrfs, bcachefs): no data moves. Offsets and length must be multiples of the file
 *     system's block size (the length may also end at the source's end); all or nothing.
 *   mode 1, copy: copy_file_range(2), looped until len bytes went or the source ended. The
 *     kernel picks the way (a reflink where the file system can, a copy between page-cache
 *     pages otherwise: no trip through user space either way).
 * Resolves to the bytes done (fewer than len only when the source ended first) or -errno:
 * -EOPNOTSUPP, -EXDEV, -EINVAL, -ENOSYS and -ETXTBSY say that this way is not open for these
 * files or offsets (the caller then reads and writes), anything else is an I/O error.
 *
 * The descriptors must stay open until the promise settles (the caller awaits it before
 * closing its files).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/fs.h>
#include <node_api.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "vdisk_copy.h"

typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  int in_fd, out_fd, mode;
  int64_t in_off, out_off, len;
  int64_t result;
} copy_job;

static void execute(napi_env env, void *data) {
  (void)env;
  copy_job *j = data;
  if (j->mode == 0) {
    struct file_clone_range r;
    r.src_fd = j->in_fd;
    r.src_offset = (uint64_t)j->in_off;
    r.src_length = (uint64_t)j->len;
    r.dest_offset = (uint64_t)j->out_off;
    j->result = ioctl(j->out_fd, FICLONERANGE, &r) < 0 ? -errno : j->len;
    return;
  }
  loff_t in = (loff_t)j->in_off, out = (loff_t)j->out_off;
  int64_t done = 0;
  while (done < j->len) {
    int64_t want = j->len - done;
    /* copy_file_range takes a size_t but moves at most ~2 GiB per call (MAX_RW_COUNT). */
    if (want > (int64_t)1 << 30) want = (int64_t)1 << 30;
    ssize_t n = copy_file_range(j->in_fd, &in, j->out_fd, &out, (size_t)want, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      j->result = -errno;
      return;
    }
    if (n == 0) break; /* the source ended */
    done += n;
  }
  j->result = done;
}

static void complete(napi_env env, napi_status st, void *data) {
  copy_job *j = data;
  napi_value v;
  napi_create_double(env, st == napi_ok ? (double)j->result : -(double)EIO, &v);
  napi_resolve_deferred(env, j->deferred, v);
  napi_delete_async_work(env, j->work);
  free(j);
}

static int arg_i64(napi_env env, napi_value v, int64_t *out) {
  double d;
  if (napi_get_value_double(env, v, &d) != napi_ok || d != d || d < 0 || d > 9007199254740991.0) return 0;
  *out = (int64_t)d;
  return 1;
}

napi_value vdisk_copy_range(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6];
  int64_t in_fd, in_off, out_fd, out_off, len, mode;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 6 || !arg_i64(env, argv[0], &in_fd) || !arg_i64(env, argv[1], &in_off) ||
      !arg_i64(env, argv[2], &out_fd) || !arg_i64(env, argv[3], &out_off) || !arg_i64(env, argv[4], &len) ||
      !arg_i64(env, argv[5], &mode) || mode > 1 || in_fd > INT32_MAX || out_fd > INT32_MAX) {
    napi_throw_type_error(env, NULL, "copyRange(inFd, inOff, outFd, outOff, len, mode)");
    return NULL;
  }
  copy_job *j = calloc(1, sizeof *j);
  if (j == NULL) {
    napi_throw_error(env, NULL, "copyRange: out of memory");
    return NULL;
  }
  j->in_fd = (int)in_fd;
  j->out_fd = (int)out_fd;
  j->in_off = in_off;
  j->out_off = out_off;
  j->len = len;
  j->mode = (int)mode;
  napi_value promise, name;
  napi_create_promise(env, &j->deferred, &promise);
  napi_create_string_utf8(env, "vdisk:copyRange", NAPI_AUTO_LENGTH, &name);
  napi_create_async_work(env, NULL, name, execute, complete, j, &j->work);
  napi_queue_async_work(env, j->work);
  return promise;
}
