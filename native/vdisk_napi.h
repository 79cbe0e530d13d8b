/* Argument and result helpers shared by the addon's C files (each gets its own static copy). */
#ifndef VDISK_NAPI_H
#define VDISK_NAPI_H
#include <node_api.h>
#include <stdint.h>

/* A number argument as an integer: 1, or 0 when v is not a number (or is NaN). */
static inline int get_i64(napi_env env, napi_value v, int64_t *out) {
  double d;
  if (napi_get_value_double(env, v, &d) != napi_ok || d != d) return 0;
  *out = (int64_t)d;
  return 1;
}

/* The bytes of a typed array (a Buffer): 1, or 0 when v is not one. */
static inline int get_bytes(napi_env env, napi_value v, void **data, size_t *len) {
  napi_typedarray_type type;
  napi_value ab;
  size_t boff;
  return napi_get_typedarray_info(env, v, &type, len, data, &ab, &boff) == napi_ok;
}

static inline int is_pow2(int64_t v) { return v > 0 && (v & (v - 1)) == 0; }

static inline napi_value num(napi_env env, double d) {
  napi_value r;
  napi_create_double(env, d, &r);
  return r;
}

/* Throw a TypeError with msg (the call's usage); returns NULL for the caller to return. */
static inline napi_value fail(napi_env env, const char *msg) {
  napi_throw_type_error(env, NULL, msg);
  return NULL;
}

#endif
