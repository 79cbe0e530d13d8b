/*
 * zstdCluster(input, mode, size, level) -> Promise<Buffer | null>
 *
 * qcow2's zstd clusters compressed (mode 0) or decompressed (mode 1) on libuv's thread pool
 * with the system's libzstd, opened at run time (dlopen "libzstd.so.1": Debian's libzstd1, on
 * every system apt runs on), so that building the addon needs no zstd headers and nothing is
 * vendored. The functions used are zstd's stable one-shot API.
 *
 *   mode 0: compress `input` at `level`; `size` is the largest output accepted (qcow2: cluster
 *           size - 1, as QEMU's qcow2_zstd_compress); a result that does not fit resolves to
 *           null (the cluster is written uncompressed, as QEMU does).
 *   mode 1: decompress the one frame in `input` into exactly `size` bytes; anything else
 *           (a bad frame, another size) rejects with zstd's error name.
 *
 * Why not WebAssembly: a wasm instance reserves gigabytes of address space for its memory and
 * fails under `prlimit --as=1G`, the limit OpenStack Nova puts on qemu-img.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <node_api.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "vdisk_zstd.h"

typedef size_t (*compress_fn)(void *, size_t, const void *, size_t, int);
typedef size_t (*decompress_fn)(void *, size_t, const void *, size_t);
typedef unsigned (*is_error_fn)(size_t);
typedef const char *(*error_name_fn)(size_t);

static struct {
  compress_fn compress;
  decompress_fn decompress;
  is_error_fn is_error;
  error_name_fn error_name;
  const char *failure;
} z;
static pthread_once_t z_once = PTHREAD_ONCE_INIT;

static void z_load(void) {
  void *h = dlopen("libzstd.so.1", RTLD_NOW | RTLD_LOCAL);
  if (h == NULL) {
    z.failure = "libzstd.so.1 cannot be loaded (install libzstd1)";
    return;
  }
  z.compress = (compress_fn)dlsym(h, "ZSTD_compress");
  z.decompress = (decompress_fn)dlsym(h, "ZSTD_decompress");
  z.is_error = (is_error_fn)dlsym(h, "ZSTD_isError");
  z.error_name = (error_name_fn)dlsym(h, "ZSTD_getErrorName");
  if (!z.compress || !z.decompress || !z.is_error || !z.error_name) z.failure = "libzstd.so.1 lacks its one-shot API";
}

typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  napi_ref input_ref;
  const uint8_t *in;
  size_t in_len;
  uint8_t *out;
  size_t out_cap;
  size_t out_len;
  int mode;
  int level;
  /* 0 done, 1 does not fit (null), -1 error (message in err) */
  int status;
  const char *err;
} zstd_job;

static void execute(napi_env env, void *data) {
  (void)env;
  zstd_job *j = data;
  pthread_once(&z_once, z_load);
  if (z.failure != NULL) {
    j->status = -1;
    j->err = z.failure;
    return;
  }
  if (j->mode == 0) {
    size_t n = z.compress(j->out, j->out_cap, j->in, j->in_len, j->level);
    if (z.is_error(n)) {
      /* dstSize_tooSmall: it does not fit; any other error is one. */
      const char *name = z.error_name(n);
      if (strstr(name, "too small") != NULL) {
        j->status = 1;
      } else {
        j->status = -1;
        j->err = name;
      }
      return;
    }
    j->out_len = n;
    j->status = 0;
    return;
  }
  size_t n = z.decompress(j->out, j->out_cap, j->in, j->in_len);
  if (z.is_error(n)) {
    j->status = -1;
    j->err = z.error_name(n);
  } else if (n != j->out_cap) {
    j->status = -1;
    j->err = "the frame does not hold one whole cluster";
  } else {
    j->out_len = n;
    j->status = 0;
  }
}

static void complete(napi_env env, napi_status st, void *data) {
  zstd_job *j = data;
  napi_value result;
  if (st != napi_ok || j->status < 0) {
    napi_value msg;
    napi_create_string_utf8(env, j->err != NULL ? j->err : "zstd failed", NAPI_AUTO_LENGTH, &msg);
    napi_create_error(env, NULL, msg, &result);
    napi_reject_deferred(env, j->deferred, result);
  } else if (j->status == 1) {
    napi_get_null(env, &result);
    napi_resolve_deferred(env, j->deferred, result);
  } else {
    void *copy;
    if (napi_create_buffer_copy(env, j->out_len, j->out, &copy, &result) == napi_ok) {
      napi_resolve_deferred(env, j->deferred, result);
    } else {
      napi_value msg;
      napi_create_string_utf8(env, "out of memory", NAPI_AUTO_LENGTH, &msg);
      napi_create_error(env, NULL, msg, &result);
      napi_reject_deferred(env, j->deferred, result);
    }
  }
  napi_delete_reference(env, j->input_ref);
  napi_delete_async_work(env, j->work);
  free(j->out);
  free(j);
}

napi_value vdisk_zstd_cluster(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  void *in;
  size_t in_len;
  int32_t mode, level;
  int64_t size;
  bool is_buffer = false;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 4 ||
      napi_is_buffer(env, argv[0], &is_buffer) != napi_ok || !is_buffer ||
      napi_get_buffer_info(env, argv[0], &in, &in_len) != napi_ok ||
      napi_get_value_int32(env, argv[1], &mode) != napi_ok || (mode != 0 && mode != 1) ||
      napi_get_value_int64(env, argv[2], &size) != napi_ok || size <= 0 || size > (1 << 26) ||
      napi_get_value_int32(env, argv[3], &level) != napi_ok || in_len == 0 || in_len > (1u << 26)) {
    napi_throw_type_error(env, NULL, "zstdCluster(input, mode, size, level): bad arguments");
    return NULL;
  }
  zstd_job *j = calloc(1, sizeof *j);
  if (j == NULL || (j->out = malloc((size_t)size)) == NULL) {
    free(j);
    napi_throw_error(env, NULL, "out of memory");
    return NULL;
  }
  j->in = in;
  j->in_len = in_len;
  j->out_cap = (size_t)size;
  j->mode = mode;
  j->level = level;
  napi_value promise, name;
  napi_create_promise(env, &j->deferred, &promise);
  napi_create_reference(env, argv[0], 1, &j->input_ref);
  napi_create_string_utf8(env, "vdisk:zstd", NAPI_AUTO_LENGTH, &name);
  napi_create_async_work(env, NULL, name, execute, complete, j, &j->work);
  napi_queue_async_work(env, j->work);
  return promise;
}
