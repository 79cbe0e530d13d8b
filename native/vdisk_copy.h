#ifndef VDISK_COPY_H
#define VDISK_COPY_H
#include <node_api.h>

napi_value vdisk_copy_range(napi_env env, napi_callback_info info);

#endif
