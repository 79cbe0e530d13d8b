/*
 * sendfileStart(sockFd, fileFd, offset, count, callback) -> job
 * sendfileCancel(job)
 *
 * Bytes [offset, offset + count) of a file to a socket with sendfile(2) (the kernel moves
 * page-cache pages to the socket: no copy through user space), on a thread of its own.
 *
 * The socket is Node's: non-blocking, and watched by libuv for reading. The thread owns
 * duplicates of both descriptors (dup(2), taken before this returns), so that Node closing
 * the socket or the caller closing the file mid-transfer can never leave the thread writing
 * to a descriptor number that something else has reused; the connection itself stays open
 * until the thread lets go of its duplicate. When the socket's buffer is full (EAGAIN) the
 * thread waits in poll(2) for POLLOUT or for the job's eventfd, which sendfileCancel signals
 * (the caller cancels when Node's socket closes: nothing else is listening then).
 *
 * Why a thread per transfer and not libuv's pool: a transfer lasts as long as the client
 * reads; a slow client would hold a pool thread (4 by default, shared with every fs call of
 * the process) for minutes. A thread here waits in poll and costs a small stack (256 KiB).
 * Why not the main thread: sendfile reads the file, and a blob that is not in the page cache
 * would block the event loop on the disk.
 *
 * The job's memory lives until both the thread has reported and the returned object is
 * collected; its descriptors (the two duplicates, the eventfd) are closed as soon as the
 * transfer is over. callback(errno, sent) runs on the main thread once the thread is done: errno 0 when all
 * `count` bytes went, ECANCELED after sendfileCancel, ENODATA when the file ended early,
 * otherwise sendfile's or poll's error (EPIPE, ECONNRESET: the client went away). `sent` is
 * the number of bytes the socket took.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <node_api.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <unistd.h>

#include "vdisk_sendfile.h"

typedef struct {
  int sock;
  int file;
  int efd;
  int64_t offset;
  int64_t count;
  int64_t sent;
  int err;
  int cancelled; /* __atomic */
  int refs;      /* __atomic: the thread's (until its callback ran) and the JS object's */
  napi_threadsafe_function tsfn;
} sf_job;

static void unref(sf_job *j) {
  if (__atomic_sub_fetch(&j->refs, 1, __ATOMIC_ACQ_REL) == 0) {
    if (j->efd >= 0) close(j->efd);
    free(j);
  }
}

static int socket_error(int fd) {
  int e = 0;
  socklen_t len = sizeof e;
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &len) < 0 || e == 0) return EPIPE;
  return e;
}

static void *run(void *arg) {
  sf_job *j = arg;
  off_t off = (off_t)j->offset;
  int64_t left = j->count;
  int err = 0;
  while (left > 0) {
    if (__atomic_load_n(&j->cancelled, __ATOMIC_ACQUIRE)) {
      err = ECANCELED;
      break;
    }
    size_t want = left > (1 << 30) ? (size_t)1 << 30 : (size_t)left;
    ssize_t n = sendfile(j->sock, j->file, &off, want);
    if (n > 0) {
      left -= n;
      j->sent += n;
      continue;
    }
    if (n == 0) {
      err = ENODATA;
      break;
    }
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) {
      err = errno;
      break;
    }
    struct pollfd p[2] = {{j->sock, POLLOUT, 0}, {j->efd, POLLIN, 0}};
    int r = poll(p, 2, -1);
    if (r < 0) {
      if (errno == EINTR) continue;
      err = errno;
      break;
    }
    if (p[1].revents != 0) {
      err = ECANCELED;
      break;
    }
    if ((p[0].revents & POLLOUT) == 0 && (p[0].revents & (POLLERR | POLLHUP | POLLNVAL)) != 0) {
      err = socket_error(j->sock);
      break;
    }
  }
  j->err = err;
  close(j->sock);
  close(j->file);
  /* call_js may free the job as soon as it is queued: nothing of it is read after this. */
  napi_threadsafe_function tsfn = j->tsfn;
  if (napi_call_threadsafe_function(tsfn, j, napi_tsfn_blocking) != napi_ok) unref(j);
  napi_release_threadsafe_function(tsfn, napi_tsfn_release);
  return NULL;
}

static void call_js(napi_env env, napi_value cb, void *context, void *data) {
  (void)context;
  sf_job *j = data;
  /* The thread is done with the eventfd: closed now, not when the JS object is collected
   * (which may be much later). sendfileCancel runs on this same thread and checks for -1. */
  close(j->efd);
  j->efd = -1;
  if (env != NULL && cb != NULL) {
    napi_value argv[2], undef;
    napi_create_int32(env, j->err, &argv[0]);
    napi_create_double(env, (double)j->sent, &argv[1]);
    napi_get_undefined(env, &undef);
    napi_call_function(env, undef, cb, 2, argv, NULL);
  }
  unref(j);
}

static void finalize_job(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  unref((sf_job *)data);
}

static napi_value throw_errno(napi_env env, const char *what, int e) {
  char msg[96];
  snprintf(msg, sizeof msg, "sendfileStart: %s: errno %d", what, e);
  napi_throw_error(env, NULL, msg);
  return NULL;
}

napi_value vdisk_sendfile_start(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  int32_t sock, file;
  int64_t offset, count;
  napi_valuetype t;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 5 ||
      napi_get_value_int32(env, argv[0], &sock) != napi_ok || sock < 0 ||
      napi_get_value_int32(env, argv[1], &file) != napi_ok || file < 0 ||
      napi_get_value_int64(env, argv[2], &offset) != napi_ok || offset < 0 ||
      napi_get_value_int64(env, argv[3], &count) != napi_ok || count < 0 ||
      napi_typeof(env, argv[4], &t) != napi_ok || t != napi_function) {
    napi_throw_type_error(env, NULL, "sendfileStart(sockFd, fileFd, offset, count, callback): bad arguments");
    return NULL;
  }
  sf_job *j = calloc(1, sizeof *j);
  if (j == NULL) return throw_errno(env, "calloc", ENOMEM);
  j->offset = offset;
  j->count = count;
  j->refs = 2;
  j->sock = fcntl(sock, F_DUPFD_CLOEXEC, 0);
  j->file = j->sock < 0 ? -1 : fcntl(file, F_DUPFD_CLOEXEC, 0);
  j->efd = j->file < 0 ? -1 : eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (j->efd < 0) {
    int e = errno;
    if (j->sock >= 0) close(j->sock);
    if (j->file >= 0) close(j->file);
    free(j);
    return throw_errno(env, "dup/eventfd", e);
  }
  napi_value name, obj;
  napi_create_string_utf8(env, "vdisk:sendfile", NAPI_AUTO_LENGTH, &name);
  if (napi_create_threadsafe_function(env, argv[4], NULL, name, 0, 1, NULL, NULL, NULL, call_js, &j->tsfn) !=
      napi_ok) {
    close(j->sock);
    close(j->file);
    close(j->efd);
    free(j);
    napi_throw_error(env, NULL, "sendfileStart: cannot create the completion callback");
    return NULL;
  }
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_attr_setstacksize(&attr, 256 * 1024);
  pthread_t th;
  int e = pthread_create(&th, &attr, run, j);
  pthread_attr_destroy(&attr);
  if (e != 0) {
    napi_release_threadsafe_function(j->tsfn, napi_tsfn_abort);
    close(j->sock);
    close(j->file);
    close(j->efd);
    free(j);
    return throw_errno(env, "pthread_create", e);
  }
  napi_create_external(env, j, finalize_job, NULL, &obj);
  return obj;
}

napi_value vdisk_sendfile_cancel(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  void *data = NULL;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1 ||
      napi_get_value_external(env, argv[0], &data) != napi_ok || data == NULL) {
    napi_throw_type_error(env, NULL, "sendfileCancel(job): bad arguments");
    return NULL;
  }
  sf_job *j = data;
  __atomic_store_n(&j->cancelled, 1, __ATOMIC_RELEASE);
  if (j->efd >= 0) {
    uint64_t one = 1;
    ssize_t w = write(j->efd, &one, sizeof one);
    (void)w;
  }
  return NULL;
}
