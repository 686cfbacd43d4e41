/* Exercises every socket syscall Retrace records, over unix (socketpair and a path
 * listener), TCP over IPv4 and IPv6, and UDP. Each pair exchanges the same fixed script, so
 * the test knows byte for byte what each side sent and received.
 * Prints one line per pair: "<name> <client_fd> <server_fd>". */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

static void die(const char *what) { perror(what); exit(2); }

/* Reads exactly n bytes with the given receive style (stream sockets may split). */
static void recv_all(int fd, char *buf, size_t n, int style) {
    size_t got = 0;
    while (got < n) {
        ssize_t r;
        if (style == 0) {
            r = read(fd, buf + got, n - got);
        } else if (style == 1) {
            struct iovec iov[2];
            size_t first = (n - got) / 3;
            iov[0].iov_base = buf + got; iov[0].iov_len = first;
            iov[1].iov_base = buf + got + first; iov[1].iov_len = n - got - first;
            r = readv(fd, iov, 2);
        } else if (style == 2) {
            struct sockaddr_storage from; socklen_t len = sizeof from;
            r = recvfrom(fd, buf + got, n - got, 0, (struct sockaddr *)&from, &len);
        } else if (style == 3) {
            struct iovec iov[2];
            size_t first = (n - got) / 2;
            iov[0].iov_base = buf + got; iov[0].iov_len = first;
            iov[1].iov_base = buf + got + first; iov[1].iov_len = n - got - first;
            struct msghdr msg = {0};
            msg.msg_iov = iov; msg.msg_iovlen = 2;
            r = recvmsg(fd, &msg, 0);
        } else {
            /* recvmmsg of up to 3 datagrams of 300 bytes each. */
            struct mmsghdr msgs[3];
            struct iovec iov[3];
            int want = (int)((n - got) / 300);
            if (want > 3) want = 3;
            memset(msgs, 0, sizeof msgs);
            for (int i = 0; i < want; i++) {
                iov[i].iov_base = buf + got + 300 * i; iov[i].iov_len = 300;
                msgs[i].msg_hdr.msg_iov = &iov[i]; msgs[i].msg_hdr.msg_iovlen = 1;
            }
            int m = recvmmsg(fd, msgs, want, MSG_WAITFORONE, NULL);
            if (m < 0) die("recvmmsg");
            r = 0;
            for (int i = 0; i < m; i++) r += msgs[i].msg_len;
        }
        if (r < 0) { if (errno == EINTR) continue; die("recv"); }
        if (r == 0) { fprintf(stderr, "unexpected EOF\n"); exit(3); }
        got += r;
    }
}

static void pattern(char *buf, size_t n, char seed) {
    for (size_t i = 0; i < n; i++) buf[i] = (char)(seed + (i * 7) % 23);
}

/* The script: client x sends with every send syscall, server y answers with two. Sizes are
 * fixed; the test rebuilds the same bytes. */
static void exchange(int x, int y, int dgram) {
    char out[70000], in[70000];
    /* 1. write / read */
    pattern(out, 1000, 'a');
    if (write(x, out, 1000) != 1000) die("write");
    recv_all(y, in, 1000, 0);
    /* 2. writev of 3 iovecs / readv */
    pattern(out, 3000, 'b');
    struct iovec wv[3] = {{out, 100}, {out + 100, 1900}, {out + 2000, 1000}};
    if (writev(x, wv, 3) != 3000) die("writev");
    recv_all(y, in, 3000, dgram ? 0 : 1);
    /* 3. sendto / recvfrom */
    pattern(out, 5000, 'c');
    if (sendto(x, out, 5000, 0, NULL, 0) != 5000) die("sendto");
    recv_all(y, in, 5000, 2);
    /* 4. sendmsg of 2 iovecs / recvmsg */
    pattern(out, 60000, 'd');
    struct iovec mv[2] = {{out, 20000}, {out + 20000, 40000}};
    struct msghdr msg = {0}; msg.msg_iov = mv; msg.msg_iovlen = 2;
    if (sendmsg(x, &msg, 0) != 60000) die("sendmsg");
    recv_all(y, in, 60000, dgram ? 0 : 3);
    /* 5. sendmmsg of 3 messages / recvmmsg */
    pattern(out, 900, 'e');
    struct iovec sv[3] = {{out, 300}, {out + 300, 300}, {out + 600, 300}};
    struct mmsghdr mm[3]; memset(mm, 0, sizeof mm);
    for (int i = 0; i < 3; i++) { mm[i].msg_hdr.msg_iov = &sv[i]; mm[i].msg_hdr.msg_iovlen = 1; }
    if (sendmmsg(x, mm, 3, 0) != 3) die("sendmmsg");
    recv_all(y, in, 900, dgram ? 4 : 0);
    /* 6. answers: sendto / recvmmsg-free read, and writev / readv */
    pattern(out, 700, 'f');
    if (sendto(y, out, 700, 0, NULL, 0) != 700) die("answer sendto");
    recv_all(x, in, 700, 2);
    pattern(out, 1300, 'g');
    struct iovec av[2] = {{out, 650}, {out + 650, 650}};
    if (writev(y, av, 2) != 1300) die("answer writev");
    recv_all(x, in, 1300, dgram ? 0 : 1);
}

static void inet_pair(int family, int type, int *cx, int *sy) {
    struct sockaddr_storage addr; socklen_t len;
    memset(&addr, 0, sizeof addr);
    if (family == AF_INET) {
        struct sockaddr_in *a = (struct sockaddr_in *)&addr;
        a->sin_family = AF_INET; a->sin_addr.s_addr = htonl(INADDR_LOOPBACK); len = sizeof *a;
    } else {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&addr;
        a->sin6_family = AF_INET6; a->sin6_addr = in6addr_loopback; len = sizeof *a;
    }
    int s = socket(family, type | SOCK_CLOEXEC, 0); if (s < 0) die("socket");
    if (bind(s, (struct sockaddr *)&addr, len) < 0) die("bind");
    if (getsockname(s, (struct sockaddr *)&addr, &len) < 0) die("getsockname");
    int c = socket(family, type, 0); if (c < 0) die("socket c");
    if (type == SOCK_STREAM) {
        if (listen(s, 4) < 0) die("listen");
        if (connect(c, (struct sockaddr *)&addr, len) < 0) die("connect");
        int a = accept4(s, NULL, NULL, SOCK_CLOEXEC); if (a < 0) die("accept4");
        close(s);
        *cx = c; *sy = a;
    } else {
        struct sockaddr_storage caddr; socklen_t clen = sizeof caddr;
        memcpy(&caddr, &addr, sizeof caddr);
        if (family == AF_INET) ((struct sockaddr_in *)&caddr)->sin_port = 0; else ((struct sockaddr_in6 *)&caddr)->sin6_port = 0;
        if (bind(c, (struct sockaddr *)&caddr, len) < 0) die("bind c");
        if (getsockname(c, (struct sockaddr *)&caddr, &clen) < 0) die("getsockname c");
        if (connect(c, (struct sockaddr *)&addr, len) < 0) die("connect udp");
        if (connect(s, (struct sockaddr *)&caddr, clen) < 0) die("connect udp back");
        *cx = c; *sy = s;
    }
}

int main(int argc, char **argv) {
    int x, y, sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0) die("socketpair");
    printf("socketpair %d %d\n", sv[0], sv[1]); fflush(stdout);
    exchange(sv[0], sv[1], 0);
    close(sv[0]); close(sv[1]);

    const char *path = argc > 1 ? argv[1] : "/tmp/retrace-helper.sock";
    unlink(path);
    struct sockaddr_un un = {0}; un.sun_family = AF_UNIX; strncpy(un.sun_path, path, sizeof un.sun_path - 1);
    int l = socket(AF_UNIX, SOCK_STREAM, 0); if (l < 0) die("unix socket");
    if (bind(l, (struct sockaddr *)&un, sizeof un) < 0) die("unix bind");
    if (listen(l, 1) < 0) die("unix listen");
    int c = socket(AF_UNIX, SOCK_STREAM, 0);
    if (connect(c, (struct sockaddr *)&un, sizeof un) < 0) die("unix connect");
    struct sockaddr_un peer; socklen_t plen = sizeof peer;
    int a = accept(l, (struct sockaddr *)&peer, &plen); if (a < 0) die("unix accept");
    printf("unix %d %d\n", c, a); fflush(stdout);
    exchange(c, a, 0);
    close(c); close(a); close(l); unlink(path);

    inet_pair(AF_INET, SOCK_STREAM, &x, &y);
    printf("tcp4 %d %d\n", x, y); fflush(stdout);
    exchange(x, y, 0); close(x); close(y);

    inet_pair(AF_INET6, SOCK_STREAM, &x, &y);
    printf("tcp6 %d %d\n", x, y); fflush(stdout);
    exchange(x, y, 0); close(x); close(y);

    inet_pair(AF_INET, SOCK_DGRAM, &x, &y);
    printf("udp4 %d %d\n", x, y); fflush(stdout);
    exchange(x, y, 1); close(x); close(y);
    return 0;
}
