#ifndef VDISK_SENDFILE_H
#define VDISK_SENDFILE_H
#include <node_api.h>

napi_value vdisk_sendfile_start(napi_env env, napi_callback_info info);
napi_value vdisk_sendfile_cancel(napi_env env, napi_callback_info info);

#endif
