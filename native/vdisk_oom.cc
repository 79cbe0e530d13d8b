// The out-of-memory handler of the CLI's isolate (issue 17).
//
// When V8 cannot get memory (its heap reached --max-old-space-size, or the address space of a
// `prlimit --as=…` ran out while it grew a space), it calls the isolate's OOM handler, which
// Node sets to print a report with a stack trace and abort (exit 134, a status qemu-img never
// uses for an error). vdisk replaces it: one line on stderr in qemu-img's words
// (strerror(ENOMEM)) and exit status 1, qemu-img's for every failure. Nothing can be done in
// JavaScript by then: the handler must not allocate on V8's heap, so it writes with write(2)
// and leaves with _exit(2). A JavaScript heap that fills up is caught one step earlier, by the
// near-heap-limit callback (V8 prints its GC trace before it calls the OOM handler); an
// address space that runs out while V8 grows is caught by the OOM handler, after V8's trace
// (files a command was writing are left as a crash would leave them:
// the formats' own consistency rules apply, as after a qemu-img killed by the kernel's OOM).
#include <node_api.h>
#include <string.h>
#include <unistd.h>
#include <v8.h>

namespace {

void write_all(const char *s) {
  size_t n = strlen(s);
  while (n > 0) {
    ssize_t w = write(2, s, n);
    if (w <= 0) return;
    s += w;
    n -= (size_t)w;
  }
}

void on_oom(const char *location, const v8::OOMDetails &details) {
  write_all("vdisk: Cannot allocate memory (");
  write_all(details.is_heap_oom ? "JavaScript heap limit reached" : "out of address space");
  if (location != nullptr && *location != '\0') {
    write_all(" in ");
    write_all(location);
  }
  write_all("): raise the process's memory limit or use smaller buffers\n");
  _exit(1);
}

// Called when the JavaScript heap is about to reach its limit, before V8 gives up and prints
// its GC trace and JS stack (which it does before calling the OOM handler): leave here, so a
// heap that is full is one line too.
size_t on_near_heap_limit(void *data, size_t current, size_t initial) {
  (void)data;
  (void)current;
  (void)initial;
  write_all("vdisk: Cannot allocate memory (JavaScript heap limit reached): raise the process's memory limit or use smaller buffers\n");
  _exit(1);
}

}  // namespace

extern "C" napi_value vdisk_install_oom_handler(napi_env env, napi_callback_info info) {
  (void)info;
  v8::Isolate *isolate = v8::Isolate::GetCurrent();
  napi_value out;
  if (isolate == nullptr) {
    napi_get_boolean(env, false, &out);
    return out;
  }
  isolate->SetOOMErrorHandler(on_oom);
  isolate->AddNearHeapLimitCallback(on_near_heap_limit, nullptr);
  napi_get_boolean(env, true, &out);
  return out;
}

// V8's young generation back to its initial size, and a full collection, now (issue 16): what
// `vdisk serve` asks for once idle, so that it keeps a small heap without running every command
// under --max-semi-space-size=1 (which slows the CLI's start-up with scavenges). kCritical makes
// V8 collect at once, on this thread, and shrink the new space (Heap::CheckMemoryPressure).
extern "C" napi_value vdisk_memory_pressure(napi_env env, napi_callback_info info) {
  (void)info;
  v8::Isolate *isolate = v8::Isolate::GetCurrent();
  napi_value out;
  if (isolate == nullptr) {
    napi_get_boolean(env, false, &out);
    return out;
  }
  isolate->MemoryPressureNotification(v8::MemoryPressureLevel::kCritical);
  napi_get_boolean(env, true, &out);
  return out;
}

// V8 flags set while the process runs (issue 16): what `node --flag` would set, without
// making V8 refuse the CLI's code cache, which it checks against the flags of the moment it
// compiles the script (bin/vdisk, before any command runs). node:v8's setFlagsFromString does
// the same but costs ~3.7 ms of start-up to load. true once V8 has taken the string.
extern "C" napi_value vdisk_set_v8_flags(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_value out;
  char flags[256];
  size_t len = 0;
  napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr);
  if (argc < 1 || napi_get_value_string_utf8(env, argv[0], flags, sizeof flags, &len) != napi_ok ||
      len + 1 >= sizeof flags) {
    napi_throw_type_error(env, nullptr, "setV8Flags(flags: string), at most 254 bytes");
    return nullptr;
  }
  v8::V8::SetFlagsFromString(flags, len);
  napi_get_boolean(env, true, &out);
  return out;
}
