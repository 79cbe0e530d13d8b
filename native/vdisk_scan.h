#ifndef VDISK_SCAN_H
#define VDISK_SCAN_H
#include <node_api.h>

napi_value vdisk_allocated_sectors_min(napi_env env, napi_callback_info info);
napi_value vdisk_pread_scan(napi_env env, napi_callback_info info);

#endif
