/*
 * bench-relay: the least a process between a Wayland client and its compositor can do, as a
 * floor for the bench's "hops" section (scripts/bench/run.ts). It listens on LISTEN; for each
 * client it connects to UPSTREAM and then forwards whatever either side sends, bytes and fds
 * (SCM_RIGHTS) alike, with one epoll_wait, one recvmsg and one sendmsg per wake-up. No parsing,
 * no queues (a short or failed send ends the pair), no fairness: not a proxy, a yardstick.
 *
 *   bench-relay LISTEN UPSTREAM
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
static int peer[65536];
static int connect_to(const char *path) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_un a = {.sun_family = AF_UNIX};
  strncpy(a.sun_path, path, sizeof a.sun_path - 1);
  if (connect(fd, (void *)&a, sizeof a) < 0) { perror("connect"); close(fd); return -1; }
  return fd;
}
int main(int argc, char **argv) {
  if (argc != 3) { fprintf(stderr, "usage: bench-relay LISTEN UPSTREAM\n"); return 2; }
  int l = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_un a = {.sun_family = AF_UNIX};
  strncpy(a.sun_path, argv[1], sizeof a.sun_path - 1);
  unlink(argv[1]);
  if (bind(l, (void *)&a, sizeof a) < 0 || listen(l, 128) < 0) { perror("bind"); return 1; }
  int ep = epoll_create1(EPOLL_CLOEXEC);
  struct epoll_event ev = {.events = EPOLLIN, .data.fd = l};
  epoll_ctl(ep, EPOLL_CTL_ADD, l, &ev);
  static char buf[65536];
  static char cbuf[CMSG_SPACE(sizeof(int) * 28)];
  struct epoll_event evs[64];
  for (;;) {
    int n = epoll_wait(ep, evs, 64, -1);
    for (int i = 0; i < n; i++) {
      int fd = evs[i].data.fd;
      if (fd == l) {
        int c = accept4(l, NULL, NULL, SOCK_CLOEXEC);
        if (c < 0) continue;
        int u = connect_to(argv[2]);
        if (u < 0) { close(c); continue; }
        peer[c] = u; peer[u] = c;
        ev.events = EPOLLIN; ev.data.fd = c; epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev);
        ev.data.fd = u; epoll_ctl(ep, EPOLL_CTL_ADD, u, &ev);
        continue;
      }
      struct iovec iov = {buf, sizeof buf};
      struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof cbuf};
      ssize_t r = recvmsg(fd, &m, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
      if (r < 0 && errno == EAGAIN) continue;
      if (r <= 0) { int p = peer[fd]; close(fd); close(p); continue; }
      iov.iov_len = r;
      int nfd = 0; int *fds = NULL;
      struct cmsghdr *cm = CMSG_FIRSTHDR(&m);
      if (cm && cm->cmsg_type == SCM_RIGHTS) { nfd = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int); fds = (int *)CMSG_DATA(cm); }
      struct msghdr s = {.msg_iov = &iov, .msg_iovlen = 1};
      if (nfd > 0) { s.msg_control = cbuf; s.msg_controllen = CMSG_SPACE(sizeof(int) * nfd); cm->cmsg_len = CMSG_LEN(sizeof(int) * nfd); }
      if (sendmsg(peer[fd], &s, MSG_NOSIGNAL) < 0) { int p = peer[fd]; close(fd); close(p); }
      for (int k = 0; k < nfd; k++) close(fds[k]);
    }
  }
}
