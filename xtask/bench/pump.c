/* Throughput pump for `cargo xtask bench`: a writer moving SIZE-byte chunks into a file or a
 * socket as fast as it can (or at RATE MB/s). The reader is the parent and the writer its child,
 * so recording the writer's PID follows the writer only.
 *
 * usage: pump file|socket SIZE TOTAL_MB [RATE_MBPS]
 * prints the writer's pid, waits for a byte on stdin, then prints "<bytes> <seconds>". */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: pump file|socket SIZE TOTAL_MB [RATE_MBPS]\n"); return 2; }
    int socket_mode = strcmp(argv[1], "socket") == 0;
    size_t size = strtoul(argv[2], NULL, 10);
    long long total = atoll(argv[3]) * 1024LL * 1024LL;
    double rate = argc > 4 ? atof(argv[4]) * 1e6 : 0; /* MB/s */
    int sv[2] = {-1, -1}, fd = -1;
    if (socket_mode) {
        if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0) { perror("socketpair"); return 1; }
        int big = 4 << 20;
        setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
        setsockopt(sv[1], SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
    } else {
        fd = open("/dev/shm/retrace-bench-pump", O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (fd < 0) { perror("open"); return 1; }
    }
    pid_t child = fork();
    if (child == 0) {
        int out = socket_mode ? sv[0] : fd;
        if (socket_mode) close(sv[1]);
        char *buf = malloc(size);
        for (size_t i = 0; i < size; i++) buf[i] = (char)(i * 31 + 7);
        printf("%d\n", getpid());
        fflush(stdout);
        char go;
        if (read(0, &go, 1) != 1) return 1;
        double start = now();
        long long done = 0, in_file = 0;
        while (done < total) {
            ssize_t n = write(out, buf, size);
            if (n <= 0) { perror("write"); return 1; }
            done += n;
            in_file += n;
            if (!socket_mode && in_file >= (64LL << 20)) { lseek(out, 0, SEEK_SET); in_file = 0; }
            if (rate > 0) {
                double ahead = done / rate - (now() - start);
                if (ahead > 0.0005) { struct timespec t = {0, (long)(ahead * 1e9)}; nanosleep(&t, NULL); }
            }
        }
        double secs = now() - start;
        printf("%lld %.6f\n", done, secs);
        fflush(stdout);
        return 0;
    }
    if (socket_mode) {
        close(sv[0]);
        char *sink = malloc(1 << 20);
        while (read(sv[1], sink, 1 << 20) > 0) {}
    }
    int status;
    waitpid(child, &status, 0);
    unlink("/dev/shm/retrace-bench-pump");
    return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}
