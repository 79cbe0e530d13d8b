/*
 * deflateCluster(input, mode, limit, probe) -> Promise<Buffer | null>
 *
 * One cluster (qcow2) or grain (vmdk) compressed on libuv's thread pool with the zlib that
 * Node itself carries and exports to addons (the same library node:zlib calls, so the bytes
 * are node:zlib's), without node:zlib's per-call cost: each pool thread keeps one z_stream
 * per mode and resets it (deflateInit allocates ~300 KiB and clears a 128 KiB hash table).
 *
 *   mode 0: raw deflate, 4 KiB window, level 6, memLevel 9: what QEMU's qcow2 writes and
 *           what its decompressor (inflateInit2 with -12) accepts.
 *   mode 1: a zlib stream, 32 KiB window, level 6, memLevel 8: compress() as QEMU's vmdk
 *           driver calls it for streamOptimized grains.
 *
 * `limit` is the largest output accepted (qcow2: cluster size - 1, as qcow2_co_compress);
 * a result that would not fit resolves to null (the caller writes the cluster uncompressed).
 *
 * `probe` 1: before deflating, a cheap test tells data that deflate cannot shrink (already
 * compressed or encrypted content, random bytes) - the same idea as btrfs' compression
 * heuristic and ZFS's early abort. Data counts as incompressible only when both hold:
 *   - its order-0 byte entropy (Miller-Madow corrected) is at least 7.995 bits per byte, so
 *     Huffman coding of literals gains at most 0.07 %, less than what a dynamic block costs
 *     in tables and codes (on 64 KiB of uniform random bytes over 256 values zlib emits 83
 *     bytes more than it read; over 254 values, 7.989 bits, 40 bytes fewer);
 *   - a 4-byte match finder over deflate's window finds repeats covering under 0.1 % of it.
 * Then mode 0 resolves to null without deflating (deflate would emit stored blocks, which
 * do not fit in cluster - 1 bytes), and mode 1 returns the grain in stored deflate blocks
 * inside a valid zlib stream (what deflate itself falls back to for such data, at the
 * cost of a copy and an Adler-32).
 */
#include <math.h>
#include <node_api.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "vdisk_deflate.h"

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
  int probe;
  /* 0 done, 1 does not fit (null), -1 zlib error */
  int status;
} deflate_job;

static __thread z_stream *tls_streams[2];

static z_stream *stream_for(int mode) {
  z_stream *s = tls_streams[mode];
  if (s != NULL) {
    if (deflateReset(s) == Z_OK) return s;
    deflateEnd(s);
    free(s);
    tls_streams[mode] = NULL;
  }
  s = calloc(1, sizeof *s);
  if (s == NULL) return NULL;
  int rc = mode == 0 ? deflateInit2(s, 6, Z_DEFLATED, -12, 9, Z_DEFAULT_STRATEGY)
                     : deflateInit2(s, 6, Z_DEFLATED, 15, 8, Z_DEFAULT_STRATEGY);
  if (rc != Z_OK) {
    free(s);
    return NULL;
  }
  tls_streams[mode] = s;
  return s;
}

static inline uint32_t load32(const uint8_t *p) {
  uint32_t v;
  memcpy(&v, p, 4);
  return v;
}

/* 1 when deflate cannot shrink buf by a useful amount (see the file comment). */
static int incompressible(const uint8_t *in, size_t n, size_t window) {
  if (n < 4096) return 0;
  uint32_t h0[256] = {0}, h1[256] = {0}, h2[256] = {0}, h3[256] = {0};
  size_t i = 0;
  for (; i + 4 <= n; i += 4) {
    h0[in[i]]++;
    h1[in[i + 1]]++;
    h2[in[i + 2]]++;
    h3[in[i + 3]]++;
  }
  for (; i < n; i++) h0[in[i]]++;
  double bits = 0;
  int used = 0;
  const double dn = (double)n;
  for (int b = 0; b < 256; b++) {
    uint32_t c = h0[b] + h1[b] + h2[b] + h3[b];
    if (c == 0) continue;
    used++;
    bits += (double)c * log2(dn / (double)c);
  }
  double h = bits / dn + (double)(used - 1) / (2.0 * dn * M_LN2);
  if (h < 7.995) return 0;

  /* Each slot keeps the last position (+1) whose 4 bytes hashed there, and those bytes: a
   * mismatch is found without touching the buffer (random data almost never matches, so the
   * branch is predictable and the loop runs at ~1 ns per byte). */
  enum { HASH_BITS = 12 };
  uint32_t slot_pos[1 << HASH_BITS];
  uint32_t slot_val[1 << HASH_BITS];
  memset(slot_pos, 0, sizeof slot_pos);
  memset(slot_val, 0, sizeof slot_val);
  const size_t allowed = n / 1024;
  size_t covered = 0;
  for (i = 0; i + 4 <= n;) {
    uint32_t v = load32(in + i);
    uint32_t k = (v * 2654435761u) >> (32 - HASH_BITS);
    uint32_t cand = slot_pos[k];
    uint32_t cval = slot_val[k];
    slot_pos[k] = (uint32_t)i + 1;
    slot_val[k] = v;
    if (cval == v && cand != 0 && i - (cand - 1) <= window) {
      size_t len = 4;
      const uint8_t *a = in + cand - 1;
      while (i + len < n && len < 258 && a[len] == in[i + len]) len++;
      covered += len;
      if (covered > allowed) return 0;
      i += len;
    } else {
      i++;
    }
  }
  return 1;
}

/* A zlib stream holding `in` in stored blocks (RFC 1950/1951). */
static size_t stored_zlib(const uint8_t *in, size_t n, uint8_t *out) {
  size_t o = 0;
  out[o++] = 0x78; /* deflate, 32 KiB window */
  out[o++] = 0x01; /* no dictionary, fastest; (0x7801 % 31) == 0 */
  size_t pos = 0;
  do {
    size_t len = n - pos < 65535 ? n - pos : 65535;
    int last = pos + len == n;
    out[o++] = last ? 1 : 0;
    out[o++] = (uint8_t)(len & 0xff);
    out[o++] = (uint8_t)(len >> 8);
    out[o++] = (uint8_t)(~len & 0xff);
    out[o++] = (uint8_t)((~len >> 8) & 0xff);
    memcpy(out + o, in + pos, len);
    o += len;
    pos += len;
  } while (pos < n);
  uLong a = adler32(adler32(0L, Z_NULL, 0), in, (uInt)n);
  out[o++] = (uint8_t)(a >> 24);
  out[o++] = (uint8_t)(a >> 16);
  out[o++] = (uint8_t)(a >> 8);
  out[o++] = (uint8_t)a;
  return o;
}

static size_t stored_bound(size_t n) { return 2 + 5 * (n / 65535 + 1) + n + 4; }

static void execute(napi_env env, void *data) {
  (void)env;
  deflate_job *j = data;
  size_t window = j->mode == 0 ? 4096 : 32768;
  if (j->probe && incompressible(j->in, j->in_len, window)) {
    if (j->mode == 0 || stored_bound(j->in_len) > j->out_cap) {
      j->status = 1;
      return;
    }
    j->out_len = stored_zlib(j->in, j->in_len, j->out);
    j->status = 0;
    return;
  }
  z_stream *s = stream_for(j->mode);
  if (s == NULL) {
    j->status = -1;
    return;
  }
  s->next_in = (Bytef *)j->in;
  s->avail_in = (uInt)j->in_len;
  s->next_out = j->out;
  s->avail_out = (uInt)j->out_cap;
  int rc = deflate(s, Z_FINISH);
  if (rc == Z_STREAM_END) {
    j->out_len = j->out_cap - s->avail_out;
    j->status = 0;
  } else if (rc == Z_OK || rc == Z_BUF_ERROR) {
    j->status = 1;
  } else {
    j->status = -1;
  }
}

static void complete(napi_env env, napi_status st, void *data) {
  deflate_job *j = data;
  napi_value result;
  if (st != napi_ok || j->status < 0) {
    napi_value msg;
    napi_create_string_utf8(env, "deflate failed", NAPI_AUTO_LENGTH, &msg);
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

napi_value vdisk_deflate_cluster(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 4) {
    napi_throw_type_error(env, NULL, "deflateCluster(input, mode, limit, probe)");
    return NULL;
  }
  void *in;
  size_t in_len;
  int32_t mode, probe;
  int64_t limit;
  bool is_buffer = false;
  napi_is_buffer(env, argv[0], &is_buffer);
  if (!is_buffer || napi_get_buffer_info(env, argv[0], &in, &in_len) != napi_ok ||
      napi_get_value_int32(env, argv[1], &mode) != napi_ok || (mode != 0 && mode != 1) ||
      napi_get_value_int64(env, argv[2], &limit) != napi_ok || limit <= 0 ||
      napi_get_value_int32(env, argv[3], &probe) != napi_ok || in_len == 0 || in_len > (1u << 26)) {
    napi_throw_type_error(env, NULL, "deflateCluster: bad arguments");
    return NULL;
  }
  deflate_job *j = calloc(1, sizeof *j);
  size_t cap = (size_t)limit;
  if (j == NULL || (j->out = malloc(cap)) == NULL) {
    free(j);
    napi_throw_error(env, NULL, "out of memory");
    return NULL;
  }
  j->in = in;
  j->in_len = in_len;
  j->out_cap = cap;
  j->mode = mode;
  j->probe = probe;
  napi_value promise, name;
  napi_create_promise(env, &j->deferred, &promise);
  napi_create_reference(env, argv[0], 1, &j->input_ref);
  napi_create_string_utf8(env, "vdisk:deflate", NAPI_AUTO_LENGTH, &name);
  napi_create_async_work(env, NULL, name, execute, complete, j, &j->work);
  napi_queue_async_work(env, j->work);
  return promise;
}
