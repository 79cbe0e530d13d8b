#ifndef VDISK_ZSTD_H
#define VDISK_ZSTD_H
#include <node_api.h>

napi_value vdisk_zstd_cluster(napi_env env, napi_callback_info info);

#endif
