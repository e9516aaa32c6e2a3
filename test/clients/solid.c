/*
 * solid: a minimal Wayland client for the end-to-end tests.
 *
 *   solid WIDTH HEIGHT 0xAARRGGBB
 *
 * Maps one xdg_toplevel of WIDTH x HEIGHT filled with exactly that ARGB8888 colour (wl_shm,
 * memfd), acks the first configure, commits, and once a wl_display_roundtrip after the commit
 * succeeded prints "mapped" on stdout. Then it keeps dispatching until it is killed or the
 * connection fails; any failure exits non-zero with a message on stderr.
 *
 * It ignores the configured size on purpose: the test counts exactly WIDTH x HEIGHT pixels.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <wayland-client.h>
#include "xdg-shell-client-protocol.h"

static struct wl_compositor *compositor;
static struct wl_shm *shm;
static struct xdg_wm_base *wm_base;
static int configured;

static void die(const char *what) {
  fprintf(stderr, "solid: %s\n", what);
  exit(1);
}

static void wm_base_ping(void *data, struct xdg_wm_base *base, uint32_t serial) {
  (void)data;
  xdg_wm_base_pong(base, serial);
}
static const struct xdg_wm_base_listener wm_base_listener = {wm_base_ping};

static void global(void *data, struct wl_registry *reg, uint32_t name, const char *iface, uint32_t version) {
  (void)data;
  (void)version;
  if (strcmp(iface, wl_compositor_interface.name) == 0) {
    compositor = wl_registry_bind(reg, name, &wl_compositor_interface, 1);
  } else if (strcmp(iface, wl_shm_interface.name) == 0) {
    shm = wl_registry_bind(reg, name, &wl_shm_interface, 1);
  } else if (strcmp(iface, xdg_wm_base_interface.name) == 0) {
    wm_base = wl_registry_bind(reg, name, &xdg_wm_base_interface, 1);
    xdg_wm_base_add_listener(wm_base, &wm_base_listener, NULL);
  }
}
static void global_remove(void *data, struct wl_registry *reg, uint32_t name) {
  (void)data;
  (void)reg;
  (void)name;
}
static const struct wl_registry_listener registry_listener = {global, global_remove};

static void surface_configure(void *data, struct xdg_surface *xs, uint32_t serial) {
  (void)data;
  xdg_surface_ack_configure(xs, serial);
  configured = 1;
}
static const struct xdg_surface_listener xdg_surface_listener = {surface_configure};

static void toplevel_configure(void *d, struct xdg_toplevel *t, int32_t w, int32_t h, struct wl_array *s) {
  (void)d;
  (void)t;
  (void)w;
  (void)h;
  (void)s;
}
static void toplevel_close(void *d, struct xdg_toplevel *t) {
  (void)d;
  (void)t;
}
static const struct xdg_toplevel_listener toplevel_listener = {toplevel_configure, toplevel_close};

int main(int argc, char **argv) {
  if (argc != 4) die("usage: solid WIDTH HEIGHT 0xAARRGGBB");
  int width = atoi(argv[1]);
  int height = atoi(argv[2]);
  uint32_t color = (uint32_t)strtoul(argv[3], NULL, 0);
  if (width <= 0 || height <= 0) die("bad size");

  struct wl_display *display = wl_display_connect(NULL);
  if (!display) die("cannot connect to the Wayland display");
  struct wl_registry *registry = wl_display_get_registry(display);
  wl_registry_add_listener(registry, &registry_listener, NULL);
  if (wl_display_roundtrip(display) < 0) die("registry roundtrip failed");
  if (!compositor || !shm || !wm_base) die("missing wl_compositor, wl_shm or xdg_wm_base");

  int stride = width * 4;
  size_t size = (size_t)stride * (size_t)height;
  int fd = memfd_create("solid", MFD_CLOEXEC);
  if (fd < 0 || ftruncate(fd, (off_t)size) < 0) die("memfd");
  uint32_t *pixels = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (pixels == MAP_FAILED) die("mmap");
  for (size_t i = 0; i < size / 4; i++) pixels[i] = color;
  struct wl_shm_pool *pool = wl_shm_create_pool(shm, fd, (int32_t)size);
  struct wl_buffer *buffer = wl_shm_pool_create_buffer(pool, 0, width, height, stride, WL_SHM_FORMAT_ARGB8888);
  wl_shm_pool_destroy(pool);
  close(fd);

  struct wl_surface *surface = wl_compositor_create_surface(compositor);
  struct xdg_surface *xs = xdg_wm_base_get_xdg_surface(wm_base, surface);
  xdg_surface_add_listener(xs, &xdg_surface_listener, NULL);
  struct xdg_toplevel *toplevel = xdg_surface_get_toplevel(xs);
  xdg_toplevel_add_listener(toplevel, &toplevel_listener, NULL);
  xdg_toplevel_set_title(toplevel, "solid");
  wl_surface_commit(surface);
  while (!configured) {
    if (wl_display_dispatch(display) < 0) die("dispatch failed before configure");
  }
  wl_surface_attach(surface, buffer, 0, 0);
  wl_surface_damage(surface, 0, 0, width, height);
  wl_surface_commit(surface);
  if (wl_display_roundtrip(display) < 0) die("roundtrip after commit failed");
  printf("mapped\n");
  fflush(stdout);

  while (wl_display_dispatch(display) >= 0) {
  }
  int err = wl_display_get_error(display);
  fprintf(stderr, "solid: connection ended (error %d: %s)\n", err, strerror(err));
  return 2;
}
