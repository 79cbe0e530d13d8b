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
 *   sendFile(out, in, off, len)            sendfile(2) from a file to a non-blocking socket: bytes
 *                                          sent (short when the socket is full) or -errno
 *   sendBytes(fd, buf, off, len, more)     send(2) with MSG_DONTWAIT|MSG_NOSIGNAL (and MSG_MORE when
 *                                          more data follows at once): bytes or -errno
 *   setSendBuffer(fd, bytes)               setsockopt(SO_SNDBUF): 0 or -errno
 *   mallocTrim()                           malloc_trim(0) (glibc): free heap pages of every
 *                                          arena back to the system; 1 when some were, 0 when
 *                                          none, -1 without glibc
 *   cached(fd, off, len)                   1 when every page of the range is in the page cache
 *                                          (cachestat(2), or mmap+mincore before Linux 6.5),
 *                                          0 when not, -errno on failure
 *
 *   allocatedSectorsMin(...), preadScan(...) qemu-img's zero scan, and a read with it on the
 *                                          pool: vdisk_scan.c
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
#include <malloc.h>
#include <node_api.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include "vdisk_deflate.h"
#include "vdisk_napi.h"
#include "vdisk_scan.h"
#include "vdisk_sendfile.h"
#include "vdisk_zstd.h"

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

/*
 * preadNowait(fd, buf, off) / pwriteNowait(fd, buf, off): one preadv2/pwritev2 with RWF_NOWAIT
 * on the calling thread: served from the page cache (bytes moved, possibly short) or -EAGAIN
 * when it would have to wait for the device (or a lock); -EOPNOTSUPP where the file system does
 * not take NOWAIT buffered I/O. Node's fs hands every call to the thread pool, ~10-20 us of
 * wake-ups and promise work per call against ~1.5 us for a cached 4 KiB pread: small requests
 * try this first (src/core/host-file.ts) and go to the pool only when it says EAGAIN.
 */
static napi_value do_rw_nowait(napi_env env, napi_callback_info info, int write) {
  size_t argc = 3;
  napi_value argv[3];
  int64_t fd, off;
  void *data;
  size_t len;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 3 || !get_i64(env, argv[0], &fd) || !get_i64(env, argv[2], &off))
    return fail(env, write ? "pwriteNowait(fd, buf, off)" : "preadNowait(fd, buf, off)");
  if (!get_bytes(env, argv[1], &data, &len)) return fail(env, "a Uint8Array");
  struct iovec iov = {data, len};
  ssize_t r = write ? pwritev2((int)fd, &iov, 1, (off_t)off, RWF_NOWAIT)
                    : preadv2((int)fd, &iov, 1, (off_t)off, RWF_NOWAIT);
  return num(env, r < 0 ? -(double)errno : (double)r);
}

static napi_value pread_nowait(napi_env env, napi_callback_info info) { return do_rw_nowait(env, info, 0); }
static napi_value pwrite_nowait(napi_env env, napi_callback_info info) { return do_rw_nowait(env, info, 1); }

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

/* misalignment(buf, align): the address of buf's first byte modulo align (a power of two). */
static napi_value misalignment(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  int64_t align;
  void *data;
  size_t len;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 2 || !get_bytes(env, argv[0], &data, &len) || !get_i64(env, argv[1], &align) || !is_pow2(align))
    return fail(env, "misalignment(buf, align)");
  return num(env, (double)((uintptr_t)data & (uintptr_t)(align - 1)));
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

static napi_value malloc_trim_(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value v;
#ifdef __GLIBC__
  napi_create_int32(env, malloc_trim(0), &v);
#else
  napi_create_int32(env, -1, &v);
#endif
  return v;
}

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

static napi_value send_file(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  int64_t out, in, off, len;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 4 || !get_i64(env, argv[0], &out) || !get_i64(env, argv[1], &in) || !get_i64(env, argv[2], &off) ||
      !get_i64(env, argv[3], &len) || off < 0 || len < 0)
    return fail(env, "sendFile(out, in, off, len)");
  off_t pos = (off_t)off;
  int64_t done = 0;
  while (done < len) {
    ssize_t n = sendfile((int)out, (int)in, &pos, (size_t)(len - done));
    if (n < 0) {
      if (errno == EINTR) continue;
      if (done > 0 && errno == EAGAIN) break;
      return num(env, -(double)errno);
    }
    if (n == 0) break; /* end of file */
    done += n;
  }
  return num(env, (double)done);
}

static napi_value send_bytes(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  int64_t fd, off, len, more = 0;
  void *data;
  size_t size;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 4 || !get_i64(env, argv[0], &fd) || napi_get_buffer_info(env, argv[1], &data, &size) != napi_ok ||
      !get_i64(env, argv[2], &off) || !get_i64(env, argv[3], &len) || off < 0 || len < 0 ||
      (uint64_t)(off + len) > size || (argc > 4 && !get_i64(env, argv[4], &more)))
    return fail(env, "sendBytes(fd, buf, off, len, more)");
  int flags = MSG_DONTWAIT | MSG_NOSIGNAL | (more ? MSG_MORE : 0);
  int64_t done = 0;
  while (done < len) {
    ssize_t n = send((int)fd, (char *)data + off + done, (size_t)(len - done), flags);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (done > 0 && errno == EAGAIN) break;
      return num(env, -(double)errno);
    }
    done += n;
  }
  return num(env, (double)done);
}

static napi_value set_send_buffer(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  int64_t fd, bytes;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 2 || !get_i64(env, argv[0], &fd) || !get_i64(env, argv[1], &bytes)) return fail(env, "setSendBuffer(fd, bytes)");
  int v = (int)bytes;
  return num(env, setsockopt((int)fd, SOL_SOCKET, SO_SNDBUF, &v, sizeof v) < 0 ? -(double)errno : 0.0);
}

/* fcntl(F_SETPIPE_SZ): the pipe's new capacity, or -errno (EPERM past the user's limit,
 * /proc/sys/fs/pipe-max-size; EBADF/EINVAL on what is not a pipe). */
static napi_value set_pipe_size(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  int64_t fd, bytes;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 2 || !get_i64(env, argv[0], &fd) || !get_i64(env, argv[1], &bytes) || bytes <= 0 || bytes > INT32_MAX)
    return fail(env, "setPipeSize(fd, bytes)");
  int r = fcntl((int)fd, F_SETPIPE_SZ, (int)bytes);
  return num(env, r < 0 ? -(double)errno : (double)r);
}

/* _exit(status): the process ends now, without Node's and V8's teardown (src/cli/engine.ts,
 * exitWhenIdle: only once the event loop has nothing left and no 'exit' listener is waiting).
 * That teardown joins V8's worker threads, so it waits for a TurboFan compilation still
 * running (5-12 ms at the end of a convert), then unmaps the heap page by page. */
static napi_value exit_now(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  int64_t status;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 1 || !get_i64(env, argv[0], &status) || status < 0 || status > 255) return fail(env, "exitNow(status)");
  _exit((int)status);
}

#ifndef __NR_cachestat
#define __NR_cachestat 451
#endif
struct vdisk_cachestat_range {
  uint64_t off;
  uint64_t len;
};
struct vdisk_cachestat {
  uint64_t nr_cache, nr_dirty, nr_writeback, nr_evicted, nr_recently_evicted;
};
static int have_cachestat = 1;

static napi_value cached(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  int64_t fd, off, len;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 3 || !get_i64(env, argv[0], &fd) || !get_i64(env, argv[1], &off) || !get_i64(env, argv[2], &len) ||
      off < 0 || len <= 0)
    return fail(env, "cached(fd, off, len)");
  long page = sysconf(_SC_PAGESIZE);
  int64_t first = off / page, last = (off + len - 1) / page;
  uint64_t pages = (uint64_t)(last - first + 1);
  if (have_cachestat) {
    struct vdisk_cachestat_range r = {(uint64_t)(first * page), pages * (uint64_t)page};
    struct vdisk_cachestat cs;
    memset(&cs, 0, sizeof cs);
    if (syscall(__NR_cachestat, (int)fd, &r, &cs, 0) == 0) return num(env, cs.nr_cache >= pages ? 1.0 : 0.0);
    if (errno != ENOSYS) return num(env, -(double)errno);
    have_cachestat = 0;
  }
  void *m = mmap(NULL, pages * page, PROT_READ, MAP_SHARED, (int)fd, (off_t)(first * page));
  if (m == MAP_FAILED) return num(env, -(double)errno);
  unsigned char vec[256];
  int all = 1;
  for (uint64_t at = 0; at < pages && all; at += sizeof vec) {
    uint64_t n = pages - at < sizeof vec ? pages - at : sizeof vec;
    if (mincore((char *)m + at * page, n * page, vec) < 0) {
      all = -errno;
      break;
    }
    for (uint64_t i = 0; i < n; i++)
      if (!(vec[i] & 1)) {
        all = 0;
        break;
      }
  }
  munmap(m, pages * page);
  return num(env, (double)all);
}

#include "vdisk_copy.h"
#include "vdisk_lane.h"

napi_value vdisk_install_oom_handler(napi_env env, napi_callback_info info); /* vdisk_oom.cc */
napi_value vdisk_memory_pressure(napi_env env, napi_callback_info info);     /* vdisk_oom.cc */
napi_value vdisk_set_v8_flags(napi_env env, napi_callback_info info);        /* vdisk_oom.cc */

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"seekData", NULL, seek_data, NULL, NULL, NULL, napi_default, NULL},
      {"seekHole", NULL, seek_hole, NULL, NULL, NULL, napi_default, NULL},
      {"fallocate", NULL, do_fallocate, NULL, NULL, NULL, napi_default, NULL},
      {"preadNowait", NULL, pread_nowait, NULL, NULL, NULL, napi_default, NULL},
      {"pwriteNowait", NULL, pwrite_nowait, NULL, NULL, NULL, napi_default, NULL},
      {"ofdLock", NULL, ofd_lock, NULL, NULL, NULL, napi_default, NULL},
      {"ofdTest", NULL, ofd_test, NULL, NULL, NULL, napi_default, NULL},
      {"mallocTrim", NULL, malloc_trim_, NULL, NULL, NULL, napi_default, NULL},
      {"syncRange", NULL, sync_range, NULL, NULL, NULL, napi_default, NULL},
      {"sendFile", NULL, send_file, NULL, NULL, NULL, napi_default, NULL},
      {"sendBytes", NULL, send_bytes, NULL, NULL, NULL, napi_default, NULL},
      {"setSendBuffer", NULL, set_send_buffer, NULL, NULL, NULL, napi_default, NULL},
      {"setPipeSize", NULL, set_pipe_size, NULL, NULL, NULL, napi_default, NULL},
      {"cached", NULL, cached, NULL, NULL, NULL, napi_default, NULL},
      {"allocatedSectorsMin", NULL, vdisk_allocated_sectors_min, NULL, NULL, NULL, napi_default, NULL},
      {"preadScan", NULL, vdisk_pread_scan, NULL, NULL, NULL, napi_default, NULL},
      {"misalignment", NULL, misalignment, NULL, NULL, NULL, napi_default, NULL},
      {"deflateCluster", NULL, vdisk_deflate_cluster, NULL, NULL, NULL, napi_default, NULL},
      {"zstdCluster", NULL, vdisk_zstd_cluster, NULL, NULL, NULL, napi_default, NULL},
      {"sendfileStart", NULL, vdisk_sendfile_start, NULL, NULL, NULL, napi_default, NULL},
      {"sendfileCancel", NULL, vdisk_sendfile_cancel, NULL, NULL, NULL, napi_default, NULL},
      {"copyRange", NULL, vdisk_copy_range, NULL, NULL, NULL, napi_default, NULL},
      {"installOomHandler", NULL, vdisk_install_oom_handler, NULL, NULL, NULL, napi_default, NULL},
      {"memoryPressure", NULL, vdisk_memory_pressure, NULL, NULL, NULL, napi_default, NULL},
      {"setV8Flags", NULL, vdisk_set_v8_flags, NULL, NULL, NULL, napi_default, NULL},
      {"exitNow", NULL, exit_now, NULL, NULL, NULL, napi_default, NULL},
      {"laneOpen", NULL, vdisk_lane_open, NULL, NULL, NULL, napi_default, NULL},
      {"laneWrite", NULL, vdisk_lane_write, NULL, NULL, NULL, napi_default, NULL},
      {"laneClose", NULL, vdisk_lane_close, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
