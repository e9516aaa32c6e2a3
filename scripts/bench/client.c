/*
 * bench-client: the native Wayland client behind `npm run bench` (libwayland-client + xdg-shell).
 * It connects to $WAYLAND_DISPLAY, runs one mode and prints one JSON line per result on stdout;
 * failures go to stderr with exit status 1. Times come from CLOCK_MONOTONIC.
 *
 *   roundtrip N WARMUP        sequential wl_display_roundtrip; median, p99 (µs)
 *   burst N                   N wl_surface.damage on a role-less surface, then one roundtrip (req/s)
 *   sync N WINDOW             N pipelined wl_display.sync, at most WINDOW in flight, all awaited (req/s)
 *   shm W H FRAMES full|partial MAXSECONDS
 *                             (pools sealed with F_SEAL_SHRINK like weston's clients make them;
 *                             BENCH_UNSEALED=1 in the environment: plain memfds)
 *                             a mapped W×H toplevel, two shm buffers; each frame: wait until the
 *                             buffer is released, fill the damaged rectangle, attach+damage+commit
 *                             (frames/s, MB/s of damaged frame data); stops after FRAMES frames or
 *                             MAXSECONDS, whichever comes first. Partial damage is a W/4×H/4
 *                             rectangle that moves every frame. Weston's pixman renderer releases
 *                             a shm buffer when the next one is committed, so this is not tied to
 *                             the headless output's 60 Hz repaint (frame callbacks would be).
 *   connect N WARMUP          connect + get_registry + roundtrip + disconnect (ms, median)
 *   idle N                    N connections, each with a mapped toplevel; prints a ready line, then
 *                             keeps dispatching until stdin reaches EOF
 *   busy CONNS SYNCS WINDOW   CONNS connections; prints a ready line, waits for a line on stdin,
 *                             then every connection runs SYNCS pipelined syncs (WINDOW in flight),
 *                             prints the result and waits for stdin EOF
 *
 * With BENCH_GATE=1 in the environment, roundtrip, burst, sync and shm print {"ready":true} once
 * connected and warmed up, wait for a line on stdin before the timed part, and after printing
 * the result stay connected until stdin reaches EOF: the runner reads the proxy's CPU time
 * around exactly the timed part (and a profile window can exclude connection set-up).
 *
 * libwayland 1.21 (Debian 12) makes a request fatal when its 4 KiB output buffer is full and the
 * socket returns EAGAIN, so every mode that writes faster than it reads flushes before the buffer
 * can fill and waits for POLLOUT when the flush is short.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#include <wayland-client.h>
#include "xdg-shell-client-protocol.h"

static void die(const char *what) {
  fprintf(stderr, "bench-client: %s (errno %d: %s)\n", what, errno, strerror(errno));
  exit(1);
}

static double now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y ? 1 : 0;
}

static double quantile(double *v, int n, double q) {
  qsort(v, (size_t)n, sizeof *v, cmp_double);
  int i = (int)(q * (double)(n - 1) + 0.5);
  return v[i < 0 ? 0 : i >= n ? n - 1 : i];
}

/* Flushes everything, waiting for POLLOUT while the socket is full. */
static void flush_all(struct wl_display *d) {
  while (wl_display_flush(d) < 0) {
    if (errno != EAGAIN) die("flush");
    struct pollfd p = {wl_display_get_fd(d), POLLOUT, 0};
    if (poll(&p, 1, -1) < 0 && errno != EINTR) die("poll");
  }
}

/* ------------------------------------------------------------------------------------------- */
/* One connection with its globals and (optionally) a mapped toplevel. */

struct conn {
  struct wl_display *display;
  struct wl_registry *registry;
  struct wl_compositor *compositor;
  struct wl_shm *shm;
  struct xdg_wm_base *wm_base;
  struct wl_surface *surface;
  struct xdg_surface *xdg_surface;
  struct xdg_toplevel *toplevel;
  int configured;
  /* busy/sync accounting */
  long sent, done, target, window;
  int want_out;
};

static void wm_base_ping(void *data, struct xdg_wm_base *base, uint32_t serial) {
  (void)data;
  xdg_wm_base_pong(base, serial);
}
static const struct xdg_wm_base_listener wm_base_listener = {wm_base_ping};

static void global(void *data, struct wl_registry *reg, uint32_t name, const char *iface, uint32_t version) {
  struct conn *c = data;
  (void)version;
  if (strcmp(iface, wl_compositor_interface.name) == 0) {
    c->compositor = wl_registry_bind(reg, name, &wl_compositor_interface, 1);
  } else if (strcmp(iface, wl_shm_interface.name) == 0) {
    c->shm = wl_registry_bind(reg, name, &wl_shm_interface, 1);
  } else if (strcmp(iface, xdg_wm_base_interface.name) == 0) {
    c->wm_base = wl_registry_bind(reg, name, &xdg_wm_base_interface, 1);
    xdg_wm_base_add_listener(c->wm_base, &wm_base_listener, c);
  }
}
static void global_remove(void *data, struct wl_registry *reg, uint32_t name) {
  (void)data;
  (void)reg;
  (void)name;
}
static const struct wl_registry_listener registry_listener = {global, global_remove};

static void xs_configure(void *data, struct xdg_surface *xs, uint32_t serial) {
  struct conn *c = data;
  xdg_surface_ack_configure(xs, serial);
  c->configured = 1;
}
static const struct xdg_surface_listener xdg_surface_listener = {xs_configure};

static void tl_configure(void *d, struct xdg_toplevel *t, int32_t w, int32_t h, struct wl_array *s) {
  (void)d;
  (void)t;
  (void)w;
  (void)h;
  (void)s;
}
static void tl_close(void *d, struct xdg_toplevel *t) {
  (void)d;
  (void)t;
}
static const struct xdg_toplevel_listener toplevel_listener = {.configure = tl_configure, .close = tl_close};

static void conn_open(struct conn *c) {
  memset(c, 0, sizeof *c);
  c->display = wl_display_connect(NULL);
  if (!c->display) die("cannot connect to the Wayland display");
  c->registry = wl_display_get_registry(c->display);
  wl_registry_add_listener(c->registry, &registry_listener, c);
  if (wl_display_roundtrip(c->display) < 0) die("registry roundtrip");
  if (!c->compositor || !c->shm || !c->wm_base) die("missing wl_compositor, wl_shm or xdg_wm_base");
}

struct buffer {
  struct wl_buffer *buffer;
  uint32_t *pixels;
  int busy;
};

static void buffer_release(void *data, struct wl_buffer *b) {
  (void)b;
  ((struct buffer *)data)->busy = 0;
}
static const struct wl_buffer_listener buffer_listener = {buffer_release};

/* Pools are sealed against shrinking, as weston's clients and libwayland-cursor make them
 * (os_create_anonymous_file: MFD_ALLOW_SEALING, then F_SEAL_SHRINK | F_SEAL_SEAL); BENCH_UNSEALED=1
 * makes a plain memfd instead (a proxy must then read such a pool defensively). */
static int unsealed_pools(void) {
  const char *v = getenv("BENCH_UNSEALED");
  return v != NULL && strcmp(v, "1") == 0;
}

/* Creates `count` W×H ARGB8888 buffers in one memfd pool. */
static void make_buffers(struct conn *c, int w, int h, struct buffer *out, int count) {
  int stride = w * 4;
  size_t one = (size_t)stride * (size_t)h;
  size_t size = one * (size_t)count;
  int unsealed = unsealed_pools();
  int fd = memfd_create("bench-client", MFD_CLOEXEC | (unsealed ? 0 : MFD_ALLOW_SEALING));
  if (fd < 0 || ftruncate(fd, (off_t)size) < 0) die("memfd");
  if (!unsealed && fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_SEAL) < 0) die("F_ADD_SEALS");
  uint8_t *map = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (map == MAP_FAILED) die("mmap");
  memset(map, 0x80, size);
  struct wl_shm_pool *pool = wl_shm_create_pool(c->shm, fd, (int32_t)size);
  for (int i = 0; i < count; i++) {
    out[i].buffer = wl_shm_pool_create_buffer(pool, (int32_t)(one * (size_t)i), w, h, stride, WL_SHM_FORMAT_XRGB8888);
    out[i].pixels = (uint32_t *)(map + one * (size_t)i);
    out[i].busy = 0;
    wl_buffer_add_listener(out[i].buffer, &buffer_listener, &out[i]);
  }
  wl_shm_pool_destroy(pool);
  close(fd);
}

/* Maps a toplevel showing `b` (which stays attached). */
static void map_toplevel(struct conn *c, struct buffer *b, int w, int h) {
  c->surface = wl_compositor_create_surface(c->compositor);
  c->xdg_surface = xdg_wm_base_get_xdg_surface(c->wm_base, c->surface);
  xdg_surface_add_listener(c->xdg_surface, &xdg_surface_listener, c);
  c->toplevel = xdg_surface_get_toplevel(c->xdg_surface);
  xdg_toplevel_add_listener(c->toplevel, &toplevel_listener, c);
  xdg_toplevel_set_title(c->toplevel, "bench-client");
  wl_surface_commit(c->surface);
  while (!c->configured) {
    if (wl_display_dispatch(c->display) < 0) die("dispatch before configure");
  }
  wl_surface_attach(c->surface, b->buffer, 0, 0);
  wl_surface_damage(c->surface, 0, 0, w, h);
  b->busy = 1;
  wl_surface_commit(c->surface);
  if (wl_display_roundtrip(c->display) < 0) die("roundtrip after first commit");
}

/* ------------------------------------------------------------------------------------------- */
/* Pipelined syncs over one or many connections, multiplexed with prepare_read/poll. */

static void sync_done(void *data, struct wl_callback *cb, uint32_t serial) {
  (void)serial;
  struct conn *c = data;
  c->done++;
  wl_callback_destroy(cb);
}
static const struct wl_callback_listener sync_listener = {sync_done};

/* 4 KiB output buffer / 12 bytes per sync: flush well before it fills. */
#define SYNCS_PER_FLUSH 256

static void fill(struct conn *c) {
  if (c->want_out) return;
  int n = 0;
  while (c->sent < c->target && c->sent - c->done < c->window) {
    struct wl_callback *cb = wl_display_sync(c->display);
    wl_callback_add_listener(cb, &sync_listener, c);
    c->sent++;
    if (++n == SYNCS_PER_FLUSH) {
      n = 0;
      if (wl_display_flush(c->display) < 0) {
        if (errno != EAGAIN) die("flush");
        c->want_out = 1;
        return;
      }
    }
  }
  if (wl_display_flush(c->display) < 0) {
    if (errno != EAGAIN) die("flush");
    c->want_out = 1;
  }
}

/* Runs until every connection has `target` syncs answered. */
static void run_syncs(struct conn *cs, int n) {
  struct pollfd *p = calloc((size_t)n, sizeof *p);
  if (!p) die("calloc");
  for (;;) {
    int pending = 0;
    for (int i = 0; i < n; i++) {
      struct conn *c = &cs[i];
      fill(c);
      if (c->done < c->target) pending = 1;
      while (wl_display_prepare_read(c->display) != 0) wl_display_dispatch_pending(c->display);
      p[i].fd = wl_display_get_fd(c->display);
      p[i].events = POLLIN | (c->want_out ? POLLOUT : 0);
      p[i].revents = 0;
    }
    if (!pending) {
      for (int i = 0; i < n; i++) wl_display_cancel_read(cs[i].display);
      break;
    }
    if (poll(p, (nfds_t)n, -1) < 0 && errno != EINTR) die("poll");
    for (int i = 0; i < n; i++) {
      struct conn *c = &cs[i];
      if (p[i].revents & (POLLIN | POLLERR | POLLHUP)) {
        if (wl_display_read_events(c->display) < 0) die("read events");
      } else {
        wl_display_cancel_read(c->display);
      }
      if (wl_display_dispatch_pending(c->display) < 0) die("dispatch");
      if (c->want_out && (p[i].revents & POLLOUT)) {
        if (wl_display_flush(c->display) >= 0) c->want_out = 0;
        else if (errno != EAGAIN) die("flush");
      }
    }
  }
  free(p);
}

/* Dispatches every connection until stdin has a line (returns 1) or reaches EOF (returns 0). */
static int serve_until_stdin(struct conn *cs, int n) {
  struct pollfd *p = calloc((size_t)n + 1, sizeof *p);
  if (!p) die("calloc");
  int result = -1;
  while (result < 0) {
    for (int i = 0; i < n; i++) {
      while (wl_display_prepare_read(cs[i].display) != 0) wl_display_dispatch_pending(cs[i].display);
      flush_all(cs[i].display);
      p[i].fd = wl_display_get_fd(cs[i].display);
      p[i].events = POLLIN;
      p[i].revents = 0;
    }
    p[n].fd = 0;
    p[n].events = POLLIN;
    p[n].revents = 0;
    if (poll(p, (nfds_t)n + 1, -1) < 0 && errno != EINTR) die("poll");
    for (int i = 0; i < n; i++) {
      if (p[i].revents & (POLLIN | POLLERR | POLLHUP)) {
        if (wl_display_read_events(cs[i].display) < 0) die("read events while idle");
      } else {
        wl_display_cancel_read(cs[i].display);
      }
      if (wl_display_dispatch_pending(cs[i].display) < 0) die("dispatch while idle");
    }
    if (p[n].revents & (POLLIN | POLLHUP)) {
      char buf[256];
      ssize_t r = read(0, buf, sizeof buf);
      result = r > 0 ? 1 : 0;
    }
  }
  free(p);
  return result;
}

/* ------------------------------------------------------------------------------------------- */
/* BENCH_GATE */

static int gated;

static void gate_start(const char *mode) {
  if (!gated) return;
  printf("{\"mode\":\"%s\",\"ready\":true}\n", mode);
  fflush(stdout);
  char c;
  while (read(0, &c, 1) == 1 && c != '\n') {
  }
}

/* Stays connected (without dispatching: nothing is expected) until stdin reaches EOF. */
static void gate_end(void) {
  if (!gated) return;
  fflush(stdout);
  char buf[64];
  while (read(0, buf, sizeof buf) > 0) {
  }
}

/* ------------------------------------------------------------------------------------------- */
/* Modes */

static void mode_roundtrip(int n, int warmup) {
  struct conn c;
  conn_open(&c);
  for (int i = 0; i < warmup; i++)
    if (wl_display_roundtrip(c.display) < 0) die("roundtrip");
  double *t = malloc(sizeof(double) * (size_t)n);
  if (!t) die("malloc");
  gate_start("roundtrip");
  double sum = 0;
  for (int i = 0; i < n; i++) {
    double t0 = now_us();
    if (wl_display_roundtrip(c.display) < 0) die("roundtrip");
    t[i] = now_us() - t0;
    sum += t[i];
  }
  double mean = sum / n;
  double p50 = quantile(t, n, 0.5);
  double p99 = quantile(t, n, 0.99);
  printf("{\"mode\":\"roundtrip\",\"n\":%d,\"median_us\":%.2f,\"p99_us\":%.2f,\"mean_us\":%.2f,\"min_us\":%.2f}\n", n, p50, p99, mean, t[0]);
  gate_end();
}

static void mode_burst(int n) {
  struct conn c;
  conn_open(&c);
  struct wl_surface *s = wl_compositor_create_surface(c.compositor);
  if (wl_display_roundtrip(c.display) < 0) die("roundtrip");
  gate_start("burst");
  /* 24 bytes each: flush every 128 to stay inside libwayland's 4 KiB buffer. */
  double t0 = now_us();
  for (int i = 0; i < n; i++) {
    wl_surface_damage(s, 0, 0, 1, 1);
    if ((i & 127) == 127) flush_all(c.display);
  }
  if (wl_display_roundtrip(c.display) < 0) die("roundtrip after burst");
  double us = now_us() - t0;
  printf("{\"mode\":\"burst\",\"n\":%d,\"request\":\"wl_surface.damage\",\"seconds\":%.6f,\"req_per_s\":%.0f}\n", n, us / 1e6, (double)n / (us / 1e6));
  gate_end();
}

static void mode_sync(long n, long window) {
  struct conn c;
  conn_open(&c);
  c.target = n;
  c.window = window;
  gate_start("sync");
  double t0 = now_us();
  run_syncs(&c, 1);
  double us = now_us() - t0;
  printf("{\"mode\":\"sync\",\"n\":%ld,\"window\":%ld,\"seconds\":%.6f,\"req_per_s\":%.0f}\n", n, window, us / 1e6, (double)n / (us / 1e6));
  gate_end();
}

static void mode_shm(int w, int h, int frames, int partial, double max_s) {
  struct conn c;
  conn_open(&c);
  struct buffer b[2];
  make_buffers(&c, w, h, b, 2);
  map_toplevel(&c, &b[0], w, h);
  int dw = partial ? w / 4 : w, dh = partial ? h / 4 : h;
  int warm = frames / 10 + 2;
  double t0 = 0;
  uint64_t bytes = 0;
  int counted = 0;
  for (int f = 0; f < warm + frames; f++) {
    if (f == warm) {
      gate_start("shm");
      t0 = now_us();
      bytes = 0;
    }
    if (f > warm && (f & 15) == 0 && now_us() - t0 > max_s * 1e6) break;
    struct buffer *cur = &b[(f + 1) & 1];
    while (cur->busy) {
      if (wl_display_dispatch(c.display) < 0) die("dispatch waiting for release");
    }
    /* Damaged rectangle moves along the diagonal so partial frames touch different rows. */
    int x = partial ? (f * 37) % (w - dw + 1) : 0;
    int y = partial ? (f * 23) % (h - dh + 1) : 0;
    uint32_t colour = 0xff000000u | (uint32_t)(f * 2654435761u);
    for (int row = y; row < y + dh; row++) {
      uint32_t *px = cur->pixels + (size_t)row * (size_t)w + x;
      for (int col = 0; col < dw; col++) px[col] = colour;
    }
    wl_surface_attach(c.surface, cur->buffer, 0, 0);
    wl_surface_damage(c.surface, x, y, dw, dh);
    cur->busy = 1;
    wl_surface_commit(c.surface);
    flush_all(c.display);
    bytes += (uint64_t)dw * (uint64_t)dh * 4;
    if (f >= warm) counted++;
  }
  /* The last frame counts when the compositor has taken it. */
  if (wl_display_roundtrip(c.display) < 0) die("final roundtrip");
  double s = (now_us() - t0) / 1e6;
  printf("{\"mode\":\"shm\",\"damage\":\"%s\",\"width\":%d,\"height\":%d,\"frames\":%d,\"seconds\":%.6f,\"fps\":%.1f,\"mb_per_s\":%.1f}\n",
         partial ? "partial" : "full", w, h, counted, s, counted / s, (double)bytes / 1e6 / s);
  gate_end();
}

static void mode_connect(int n, int warmup) {
  double *t = malloc(sizeof(double) * (size_t)n);
  if (!t) die("malloc");
  for (int i = 0; i < warmup + n; i++) {
    double t0 = now_us();
    struct wl_display *d = wl_display_connect(NULL);
    if (!d) die("connect");
    struct wl_registry *r = wl_display_get_registry(d);
    if (wl_display_roundtrip(d) < 0) die("roundtrip");
    double dt = now_us() - t0;
    wl_registry_destroy(r);
    wl_display_disconnect(d);
    if (i >= warmup) t[i - warmup] = dt;
  }
  double p50 = quantile(t, n, 0.5);
  printf("{\"mode\":\"connect\",\"n\":%d,\"median_ms\":%.4f,\"p99_ms\":%.4f}\n", n, p50 / 1e3, quantile(t, n, 0.99) / 1e3);
}

static void mode_idle(int n) {
  struct conn *cs = calloc((size_t)n, sizeof *cs);
  struct buffer *bs = calloc((size_t)n, sizeof *bs);
  if (!cs || !bs) die("calloc");
  for (int i = 0; i < n; i++) {
    conn_open(&cs[i]);
    make_buffers(&cs[i], 64, 64, &bs[i], 1);
    map_toplevel(&cs[i], &bs[i], 64, 64);
  }
  printf("{\"mode\":\"idle\",\"clients\":%d,\"ready\":true}\n", n);
  fflush(stdout);
  while (serve_until_stdin(cs, n) == 1) {
  }
}

static void mode_busy(int n, long syncs, long window) {
  struct conn *cs = calloc((size_t)n, sizeof *cs);
  if (!cs) die("calloc");
  for (int i = 0; i < n; i++) {
    conn_open(&cs[i]);
    cs[i].target = syncs;
    cs[i].window = window;
  }
  printf("{\"mode\":\"busy\",\"clients\":%d,\"ready\":true}\n", n);
  fflush(stdout);
  if (serve_until_stdin(cs, n) == 0) return;
  double t0 = now_us();
  run_syncs(cs, n);
  double us = now_us() - t0;
  long total = syncs * n;
  /* Each sync is one request and two events (wl_callback.done, wl_display.delete_id). */
  printf("{\"mode\":\"busy\",\"clients\":%d,\"syncs\":%ld,\"messages\":%ld,\"seconds\":%.6f,\"req_per_s\":%.0f}\n", n, total, total * 3, us / 1e6,
         (double)total / (us / 1e6));
  fflush(stdout);
  while (serve_until_stdin(cs, n) == 1) {
  }
}

static int arg(char **argv, int argc, int i, int dflt) { return i < argc ? atoi(argv[i]) : dflt; }

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: bench-client roundtrip|burst|sync|shm|connect|idle|busy ARGS…\n");
    return 2;
  }
  setvbuf(stdout, NULL, _IOLBF, 0);
  gated = getenv("BENCH_GATE") != NULL && strcmp(getenv("BENCH_GATE"), "1") == 0;
  const char *m = argv[1];
  if (strcmp(m, "roundtrip") == 0) mode_roundtrip(arg(argv, argc, 2, 2000), arg(argv, argc, 3, 200));
  else if (strcmp(m, "burst") == 0) mode_burst(arg(argv, argc, 2, 10000));
  else if (strcmp(m, "sync") == 0) mode_sync(arg(argv, argc, 2, 10000), arg(argv, argc, 3, 1000));
  else if (strcmp(m, "shm") == 0)
    mode_shm(arg(argv, argc, 2, 1024), arg(argv, argc, 3, 768), arg(argv, argc, 4, 200), argc > 5 && strcmp(argv[5], "partial") == 0,
             argc > 6 ? atof(argv[6]) : 2.0);
  else if (strcmp(m, "connect") == 0) mode_connect(arg(argv, argc, 2, 50), arg(argv, argc, 3, 5));
  else if (strcmp(m, "idle") == 0) mode_idle(arg(argv, argc, 2, 1));
  else if (strcmp(m, "busy") == 0) mode_busy(arg(argv, argc, 2, 1), arg(argv, argc, 3, 1000), arg(argv, argc, 4, 100));
  else {
    fprintf(stderr, "bench-client: unknown mode %s\n", m);
    return 2;
  }
  return 0;
}
