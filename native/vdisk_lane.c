/*
 * A file's write lane: its writes one after another, back to back, off the main thread.
 *
 *   laneOpen() -> Lane
 *   laneWrite(lane, fd, bufs: Uint8Array[], off) -> Promise<number>
 *     bufs written back to back at off (pwritev, looped over short writes and EINTR), after
 *     every write queued before it on this lane: the bytes written, or -errno.
 *   laneClose(lane): no write may be queued after it (the caller awaits its writes first).
 *
 * Why (issue 16): a buffered write takes the file's inode lock (i_rwsem) on ext4, XFS and
 * btrfs alike, so writes to one file never run side by side in the kernel. Sent to libuv's
 * pool they arrive side by side anyway, and the waiting threads spin on the lock
 * (rwsem_spin_on_owner): ~10 % of a qcow2 -> raw convert's CPU, and in a virtual machine
 * whose vCPUs the host preempts, most of it (61 % of a 1.1 s convert that takes 0.3 s
 * otherwise; kvm_vcpu_is_preempted in every sample). One write at a time from JavaScript
 * (await each before the next) removes the spinning but leaves the file idle for the round
 * trip between a write's end and the next one's start (~10 % more wall time). Here the writes
 * queue in C and one pool job writes them in order as long as the queue holds any; each one's
 * end reaches JavaScript through a thread-safe function. qemu-img's convert has the same
 * shape: one write in flight, in order.
 *
 * The buffers are referenced until their write ends. The lane is freed once JavaScript has
 * dropped it, no pool job runs and the thread-safe function has made its last call.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <node_api.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/uio.h>
#include <unistd.h>

#include "vdisk_lane.h"
#include "vdisk_napi.h"

typedef struct job {
  struct job *next;
  napi_deferred deferred;
  int fd;
  int count;
  int64_t off;
  int64_t result;
  struct iovec *iov;
  napi_ref *refs;
} job;

typedef struct lane {
  pthread_mutex_t mu;
  job *head, *tail;
  int running;  /* a pool job is draining the queue */
  int refs;     /* JavaScript's handle + running pool jobs (under mu) */
  int closed;
  int64_t outstanding; /* writes whose end JavaScript has not seen (main thread only) */
  napi_threadsafe_function tsfn;
} lane;

typedef struct {
  napi_async_work work;
  lane *l;
} drain;

static void lane_unref(lane *l) {
  pthread_mutex_lock(&l->mu);
  int left = --l->refs;
  pthread_mutex_unlock(&l->mu);
  if (left == 0) {
    pthread_mutex_destroy(&l->mu);
    free(l);
  }
}

/* pwritev of the whole job, over short writes: bytes written or -errno. */
static int64_t write_all(job *j) {
  struct iovec *iov = j->iov;
  int cnt = j->count;
  int64_t off = j->off, done = 0;
  while (cnt > 0) {
    if (iov->iov_len == 0) {
      iov++;
      cnt--;
      continue;
    }
    ssize_t n = pwritev(j->fd, iov, cnt > IOV_MAX ? IOV_MAX : cnt, off);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    if (n == 0) return -EIO;
    done += n;
    off += n;
    while (n > 0 && cnt > 0) {
      if ((size_t)n >= iov->iov_len) {
        n -= (ssize_t)iov->iov_len;
        iov++;
        cnt--;
      } else {
        iov->iov_base = (uint8_t *)iov->iov_base + n;
        iov->iov_len -= (size_t)n;
        n = 0;
      }
    }
  }
  return done;
}

static void drain_execute(napi_env env, void *data) {
  (void)env;
  lane *l = ((drain *)data)->l;
  for (;;) {
    pthread_mutex_lock(&l->mu);
    job *j = l->head;
    if (j == NULL) {
      l->running = 0;
      pthread_mutex_unlock(&l->mu);
      return;
    }
    l->head = j->next;
    if (l->head == NULL) l->tail = NULL;
    pthread_mutex_unlock(&l->mu);
    j->result = write_all(j);
    /* The queue is unbounded: this never blocks, and fails only once the function is
       released, which laneClose does only after every write has ended. */
    napi_call_threadsafe_function(l->tsfn, j, napi_tsfn_nonblocking);
  }
}

static void drain_complete(napi_env env, napi_status status, void *data) {
  (void)status;
  drain *d = data;
  napi_delete_async_work(env, d->work);
  lane_unref(d->l);
  free(d);
}

/* On the main thread: a write ended. */
static void call_js(napi_env env, napi_value js_cb, void *context, void *data) {
  (void)js_cb;
  lane *l = context;
  job *j = data;
  if (env != NULL) {
    for (int i = 0; i < j->count; i++) napi_delete_reference(env, j->refs[i]);
    napi_resolve_deferred(env, j->deferred, num(env, (double)j->result));
    if (--l->outstanding == 0 && !l->closed) napi_unref_threadsafe_function(env, l->tsfn);
  }
  free(j->iov);
  free(j->refs);
  free(j);
}

/* The thread-safe function is gone (after its last call, or as Node tears the environment
   down): its hold on the lane ends, and nothing may be queued any more. */
static void tsfn_finalize(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  lane *l = data;
  l->closed = 1;
  lane_unref(l);
}

static void lane_finalize(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  lane *l = data;
  if (!l->closed) {
    l->closed = 1;
    napi_release_threadsafe_function(l->tsfn, napi_tsfn_release);
  }
  lane_unref(l);
}

napi_value vdisk_lane_open(napi_env env, napi_callback_info info) {
  (void)info;
  lane *l = calloc(1, sizeof *l);
  if (l == NULL) return fail(env, "laneOpen: out of memory");
  pthread_mutex_init(&l->mu, NULL);
  l->refs = 2; /* JavaScript's handle and the thread-safe function */
  napi_value name, out;
  napi_create_string_utf8(env, "vdisk write lane", NAPI_AUTO_LENGTH, &name);
  if (napi_create_threadsafe_function(env, NULL, NULL, name, 0, 1, l, tsfn_finalize, l, call_js, &l->tsfn) !=
      napi_ok) {
    pthread_mutex_destroy(&l->mu);
    free(l);
    return fail(env, "laneOpen: no thread-safe function");
  }
  /* Referenced (keeping the event loop alive) only while writes are outstanding. */
  napi_unref_threadsafe_function(env, l->tsfn);
  if (napi_create_external(env, l, lane_finalize, NULL, &out) != napi_ok) {
    l->closed = 1;
    napi_release_threadsafe_function(l->tsfn, napi_tsfn_abort);
    lane_unref(l);
    return fail(env, "laneOpen: no handle");
  }
  return out;
}

static lane *get_lane(napi_env env, napi_value v) {
  void *p = NULL;
  napi_valuetype t;
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_external) return NULL;
  if (napi_get_value_external(env, v, &p) != napi_ok) return NULL;
  return p;
}

napi_value vdisk_lane_write(napi_env env, napi_callback_info info) {
  const char *usage = "laneWrite(lane, fd, bufs: Uint8Array[], off)";
  size_t argc = 4;
  napi_value argv[4];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  lane *l = argc < 4 ? NULL : get_lane(env, argv[0]);
  int64_t fd, off;
  uint32_t count = 0;
  bool is_array = false;
  if (l == NULL || l->closed || !get_i64(env, argv[1], &fd) || !get_i64(env, argv[3], &off) || fd < 0 ||
      off < 0 || napi_is_array(env, argv[2], &is_array) != napi_ok || !is_array ||
      napi_get_array_length(env, argv[2], &count) != napi_ok || count == 0 || count > 1024)
    return fail(env, usage);
  job *j = calloc(1, sizeof *j);
  struct iovec *iov = calloc(count, sizeof *iov);
  napi_ref *refs = calloc(count, sizeof *refs);
  if (j == NULL || iov == NULL || refs == NULL) {
    free(j);
    free(iov);
    free(refs);
    return fail(env, "laneWrite: out of memory");
  }
  j->iov = iov;
  j->refs = refs;
  for (uint32_t i = 0; i < count; i++) {
    napi_value b;
    void *data = NULL;
    size_t len = 0;
    if (napi_get_element(env, argv[2], i, &b) != napi_ok || !get_bytes(env, b, &data, &len)) {
      for (int k = 0; k < j->count; k++) napi_delete_reference(env, refs[k]);
      free(iov);
      free(refs);
      free(j);
      return fail(env, usage);
    }
    iov[i].iov_base = data;
    iov[i].iov_len = len;
    napi_create_reference(env, b, 1, &refs[i]);
    j->count = (int)i + 1;
  }
  j->fd = (int)fd;
  j->off = off;
  napi_value promise;
  napi_create_promise(env, &j->deferred, &promise);
  if (l->outstanding++ == 0) napi_ref_threadsafe_function(env, l->tsfn);

  pthread_mutex_lock(&l->mu);
  if (l->tail != NULL) l->tail->next = j;
  else l->head = j;
  l->tail = j;
  int start = !l->running;
  if (start) {
    l->running = 1;
    l->refs++;
  }
  pthread_mutex_unlock(&l->mu);
  if (start) {
    drain *d = calloc(1, sizeof *d);
    napi_value name;
    napi_create_string_utf8(env, "vdisk lane drain", NAPI_AUTO_LENGTH, &name);
    if (d != NULL) d->l = l;
    if (d == NULL || napi_create_async_work(env, NULL, name, drain_execute, drain_complete, d, &d->work) != napi_ok ||
        napi_queue_async_work(env, d->work) != napi_ok) {
      /* Nothing will drain the queue: run it here (the main thread waits, nothing is lost). */
      drain local = {NULL, l};
      drain_execute(env, &local);
      lane_unref(l);
      free(d);
    }
  }
  return promise;
}

napi_value vdisk_lane_close(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  lane *l = argc < 1 ? NULL : get_lane(env, argv[0]);
  if (l == NULL) return fail(env, "laneClose(lane)");
  if (!l->closed) {
    l->closed = 1;
    napi_release_threadsafe_function(l->tsfn, napi_tsfn_release);
  }
  return NULL;
}
