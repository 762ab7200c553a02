/*
 * The floor under any FFI built on Node-API: a hand-written addon that makes
 * the same ioctl(fd, request, address) as the backend, with no FFI layer at
 * all. Built by bench/ffi.ts at bench time (gcc and Node's own headers) into
 * .cache/bench/napi_floor.node. What this costs over the C loop is what the
 * JS-to-native call and three number conversions cost through Node-API;
 * koffi is itself a Node-API addon, so it cannot go below this.
 *
 * Errors are not thrown, only returned (-1), as koffi returns them.
 */
#include <node_api.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <unistd.h>

static napi_value int_result(napi_env env, int rc) {
  napi_value out;
  if (napi_create_int32(env, rc, &out) != napi_ok) return NULL;
  return out;
}

/* ioctl(fd, request, address): the address is an integer, as the backend passes its argument area. */
static napi_value call_ioctl(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  int32_t fd;
  uint32_t request;
  int64_t address;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 3 ||
      napi_get_value_int32(env, argv[0], &fd) != napi_ok ||
      napi_get_value_uint32(env, argv[1], &request) != napi_ok ||
      napi_get_value_int64(env, argv[2], &address) != napi_ok) {
    napi_throw_type_error(env, NULL, "ioctl(fd, request, address) takes three numbers");
    return NULL;
  }
  return int_result(env, ioctl(fd, request, (void *)(intptr_t)address));
}

/* No arguments: the fixed cost of a Node-API call. */
static napi_value call_getppid(napi_env env, napi_callback_info info) {
  (void)info;
  return int_result(env, getppid());
}

NAPI_MODULE_INIT() {
  napi_value fn;
  if (napi_create_function(env, "ioctl", NAPI_AUTO_LENGTH, call_ioctl, NULL, &fn) != napi_ok ||
      napi_set_named_property(env, exports, "ioctl", fn) != napi_ok ||
      napi_create_function(env, "getppid", NAPI_AUTO_LENGTH, call_getppid, NULL, &fn) != napi_ok ||
      napi_set_named_property(env, exports, "getppid", fn) != napi_ok)
    return NULL;
  return exports;
}
