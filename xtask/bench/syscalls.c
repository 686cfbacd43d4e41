/* For `cargo xtask bench`: what a tracer costs a process, per system call.
 *
 * usage: syscalls N                      reads 64 bytes from /dev/zero N times (a process the
 *                                        tracer does not record) and prints ns per read(2)
 *        syscalls N LOOP FILE            prints its pid, waits for a byte on stdin (the
 *                                        recorder attaches meanwhile), runs LOOP N times and
 *                                        prints ns per iteration. LOOP: pread (1 KiB of FILE),
 *                                        openclose (FILE), socket (512 bytes written into one
 *                                        end of a socket pair and read from the other: a
 *                                        request as redis gets it), getppid (a call nobody
 *                                        records) */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 2000000;
    const char *loop = argc > 3 ? argv[2] : "read64";
    const char *path = argc > 3 ? argv[3] : "/dev/zero";
    int fd = open(path, O_RDONLY);
    if (fd < 0) { perror(path); return 1; }
    if (argc > 3) {
        char go;
        printf("%d\n", getpid());
        fflush(stdout);
        if (read(0, &go, 1) != 1) return 1;
    }
    char buf[1024];
    int pair[2] = {-1, -1};
    if (!strcmp(loop, "socket") && socketpair(AF_UNIX, SOCK_STREAM, 0, pair) < 0) { perror("socketpair"); return 1; }
    memset(buf, 'r', sizeof buf);
    double start = now_ns();
    for (long i = 0; i < n; i++) {
        if (!strcmp(loop, "read64")) {
            if (read(fd, buf, 64) != 64) { perror("read"); return 1; }
        } else if (!strcmp(loop, "pread")) {
            if (pread(fd, buf, sizeof buf, 0) != sizeof buf) { perror("pread"); return 1; }
        } else if (!strcmp(loop, "openclose")) {
            int f = open(path, O_RDONLY);
            if (f < 0) { perror("open"); return 1; }
            close(f);
        } else if (!strcmp(loop, "socket")) {
            if (write(pair[0], buf, 512) != 512 || read(pair[1], buf, 512) != 512) { perror("socket"); return 1; }
        } else if (!strcmp(loop, "getppid")) {
            getppid();
        } else {
            fprintf(stderr, "unknown loop %s\n", loop);
            return 2;
        }
    }
    printf("%.1f\n", (now_ns() - start) / n);
    return 0;
}
