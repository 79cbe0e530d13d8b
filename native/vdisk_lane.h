#ifndef VDISK_LANE_H
#define VDISK_LANE_H
#include <node_api.h>

napi_value vdisk_lane_open(napi_env env, napi_callback_info info);
napi_value vdisk_lane_write(napi_env env, napi_callback_info info);
napi_value vdisk_lane_close(napi_env env, napi_callback_info info);

#endif
