/*
 * The syscalls the koffi bench makes, looped in C and timed with
 * clock_gettime(CLOCK_MONOTONIC). Built by bench/ffi.ts at bench time into
 * .cache/bench/libsyscall_cost.so and called once per round through koffi,
 * so the C loop and the koffi loop run in the same process, back to back.
 * Each function returns nanoseconds per call (negative on a failed call).
 */
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static double now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

unsigned long fionread_request(void) { return FIONREAD; }

double ioctl_fionread_loop(int fd, long n) {
  int value;
  double t0 = now_ns();
  for (long i = 0; i < n; i++) {
    if (ioctl(fd, FIONREAD, &value) != 0) return -1;
  }
  return (now_ns() - t0) / n;
}

double fstat_loop(int fd, long n) {
  struct stat st;
  double t0 = now_ns();
  for (long i = 0; i < n; i++) {
    if (fstat(fd, &st) != 0) return -1;
  }
  return (now_ns() - t0) / n;
}

double getppid_loop(long n) {
  volatile int sink = 0;
  double t0 = now_ns();
  for (long i = 0; i < n; i++) sink += getppid();
  return (now_ns() - t0) / n;
}
