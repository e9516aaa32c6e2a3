/*
 * Ping-pong endpoints for scripts/bench/reactor.ts (compiled there with cc -O2).
 *
 *   pingpong server PATH
 *       listen on PATH, accept one connection, echo every chunk back with the fds it carried
 *       (then close our copies); exit at EOF.
 *   pingpong client PATH ITERATIONS WARMUP SIZE FDS
 *       connect, then ITERATIONS+WARMUP round trips of SIZE bytes (+ FDS memfds attached to
 *       each ping); prints "median_us p99_us mean_us" over the timed iterations.
 *
 * Blocking sockets: the C side adds no event loop of its own. Round trips are timed with
 * CLOCK_MONOTONIC around sendmsg → recvmsg-until-SIZE-bytes.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define MAX_FDS 28
#define CHUNK 65536

static void die(const char *what) {
	perror(what);
	exit(1);
}

static struct sockaddr_un addr_of(const char *path) {
	struct sockaddr_un sa;
	memset(&sa, 0, sizeof sa);
	sa.sun_family = AF_UNIX;
	if (strlen(path) >= sizeof sa.sun_path) {
		fprintf(stderr, "path too long\n");
		exit(1);
	}
	strcpy(sa.sun_path, path);
	return sa;
}

/* recvmsg into buf; received fds appended to fds[*nfds]. Returns bytes (0 = EOF). */
static ssize_t recv_with_fds(int fd, char *buf, size_t len, int *fds, int *nfds) {
	char control[CMSG_SPACE(sizeof(int) * MAX_FDS)];
	struct iovec iov = { buf, len };
	struct msghdr msg = { 0 };
	msg.msg_iov = &iov;
	msg.msg_iovlen = 1;
	msg.msg_control = control;
	msg.msg_controllen = sizeof control;
	ssize_t n;
	do n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
	while (n < 0 && errno == EINTR);
	if (n < 0) die("recvmsg");
	if (msg.msg_flags & MSG_CTRUNC) {
		fprintf(stderr, "MSG_CTRUNC\n");
		exit(1);
	}
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
		if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
			int k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
			memcpy(fds + *nfds, CMSG_DATA(c), k * sizeof(int));
			*nfds += k;
		}
	}
	return n;
}

static void send_all(int fd, const char *buf, size_t len, const int *fds, int nfds) {
	char control[CMSG_SPACE(sizeof(int) * MAX_FDS)];
	size_t off = 0;
	while (off < len) {
		struct iovec iov = { (char *)buf + off, len - off };
		struct msghdr msg = { 0 };
		msg.msg_iov = &iov;
		msg.msg_iovlen = 1;
		if (nfds > 0) {
			memset(control, 0, sizeof control);
			msg.msg_control = control;
			msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
			struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
			c->cmsg_level = SOL_SOCKET;
			c->cmsg_type = SCM_RIGHTS;
			c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
			memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
		}
		ssize_t n = sendmsg(fd, &msg, MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR) continue;
		if (n < 0) die("sendmsg");
		off += n;
		nfds = 0; /* sent with the first byte */
	}
}

static int server(const char *path) {
	struct sockaddr_un sa = addr_of(path);
	int l = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (l < 0) die("socket");
	unlink(path);
	if (bind(l, (struct sockaddr *)&sa, sizeof sa) < 0) die("bind");
	if (listen(l, 16) < 0) die("listen");
	int c = accept4(l, NULL, NULL, SOCK_CLOEXEC);
	if (c < 0) die("accept");
	static char buf[CHUNK];
	int fds[4 * MAX_FDS];
	for (;;) {
		int nfds = 0;
		ssize_t n = recv_with_fds(c, buf, sizeof buf, fds, &nfds);
		if (n == 0) break;
		send_all(c, buf, n, fds, nfds);
		for (int i = 0; i < nfds; i++) close(fds[i]);
	}
	close(c);
	close(l);
	unlink(path);
	return 0;
}

static double now_us(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static int cmp(const void *a, const void *b) {
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static int client(const char *path, int iterations, int warmup, int size, int nfds) {
	struct sockaddr_un sa = addr_of(path);
	int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (s < 0) die("socket");
	if (connect(s, (struct sockaddr *)&sa, sizeof sa) < 0) die("connect");
	if (size < 1 || size > CHUNK || nfds < 0 || nfds > MAX_FDS) {
		fprintf(stderr, "bad size or fd count\n");
		return 1;
	}
	int sendfds[MAX_FDS];
	for (int i = 0; i < nfds; i++) {
		sendfds[i] = memfd_create("pingpong", MFD_CLOEXEC);
		if (sendfds[i] < 0 || ftruncate(sendfds[i], 4096) < 0) die("memfd");
	}
	static char out[CHUNK], in[CHUNK];
	for (int i = 0; i < size; i++) out[i] = (char)i;
	double *samples = malloc(sizeof(double) * (iterations > 0 ? iterations : 1));
	int got_fds[4 * MAX_FDS];
	for (int it = 0; it < warmup + iterations; it++) {
		double t0 = now_us();
		send_all(s, out, size, sendfds, nfds);
		int have = 0, nf = 0;
		while (have < size) {
			ssize_t n = recv_with_fds(s, in + have, size - have, got_fds, &nf);
			if (n == 0) {
				fprintf(stderr, "unexpected EOF\n");
				return 1;
			}
			have += n;
		}
		double t1 = now_us();
		if (nf != nfds) {
			fprintf(stderr, "expected %d fds back, got %d\n", nfds, nf);
			return 1;
		}
		for (int i = 0; i < nf; i++) close(got_fds[i]);
		if (memcmp(in, out, size) != 0) {
			fprintf(stderr, "echo mismatch\n");
			return 1;
		}
		if (it >= warmup) samples[it - warmup] = t1 - t0;
	}
	qsort(samples, iterations, sizeof(double), cmp);
	double sum = 0;
	for (int i = 0; i < iterations; i++) sum += samples[i];
	printf("%.3f %.3f %.3f\n", samples[iterations / 2], samples[(int)(iterations * 0.99)], sum / iterations);
	close(s);
	return 0;
}

int main(int argc, char **argv) {
	if (argc == 3 && strcmp(argv[1], "server") == 0) return server(argv[2]);
	if (argc == 7 && strcmp(argv[1], "client") == 0)
		return client(argv[2], atoi(argv[3]), atoi(argv[4]), atoi(argv[5]), atoi(argv[6]));
	fprintf(stderr, "usage: pingpong server PATH | pingpong client PATH ITERATIONS WARMUP SIZE FDS\n");
	return 2;
}
