#ifndef VDISK_DEFLATE_H
#define VDISK_DEFLATE_H
#include <node_api.h>

napi_value vdisk_deflate_cluster(napi_env env, napi_callback_info info);

#endif
