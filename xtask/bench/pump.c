/* Throughput pump for `cargo xtask bench`: a writer moving SIZE-byte chunks into a file or a
 * socket as fast as it can (or at RATE MB/s). The reader is the parent and the writer its child,
 * so recording the writer's PID follows the writer only.
 *
 * usage: pump file|socket SIZE TOTAL_MB [RATE_MBPS [pattern|json|random]]
 * The chunk holds a short repeating pattern (default), JSON log lines (compressible like real
 * text) or random bytes (incompressible); the same chunk is written over and over.
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

static unsigned long long seed = 88172645463325252ULL;
static unsigned rnd(void) {
    seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
    return (unsigned)(seed >> 33);
}

/* Log lines with varied fields: no e-mail addresses, card-like digit runs or tokens, so the
 * redaction stage passes them through as they are. */
static void fill_json(char *buf, size_t size) {
    static const char *words[] = {"alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel",
                                  "india", "juliet", "kilo", "lima", "mike", "november", "oscar", "papa"};
    static const char *paths[] = {"/api/v1/orders", "/api/v1/users", "/api/v2/cart", "/health", "/static/app.js",
                                  "/api/v1/search"};
    static const char *methods[] = {"GET", "GET", "GET", "POST", "PUT", "DELETE"};
    static const char *levels[] = {"info", "info", "info", "debug", "warn", "error"};
    size_t pos = 0;
    while (pos < size) {
        char line[512];
        int n = snprintf(line, sizeof line,
                         "{\"ts\":\"2026-12-01T%02u:%02u:%02u.%06uZ\",\"level\":\"%s\",\"method\":\"%s\","
                         "\"path\":\"%s/%u\",\"status\":%u,\"ms\":%u.%03u,\"user\":\"%s-%s-%u\","
                         "\"items\":[%u,%u,%u],\"note\":\"%s %s %s\"}\n",
                         rnd() % 24, rnd() % 60, rnd() % 60, rnd() % 1000000, levels[rnd() % 6], methods[rnd() % 6],
                         paths[rnd() % 6], rnd() % 100000, 200 + 100 * (rnd() % 4), rnd() % 900, rnd() % 1000,
                         words[rnd() % 16], words[rnd() % 16], rnd() % 10000, rnd() % 1000, rnd() % 1000,
                         rnd() % 1000, words[rnd() % 16], words[rnd() % 16], words[rnd() % 16]);
        size_t take = (size_t)n < size - pos ? (size_t)n : size - pos;
        memcpy(buf + pos, line, take);
        pos += take;
    }
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: pump file|socket SIZE TOTAL_MB [RATE_MBPS [pattern|json|random]]\n"); return 2; }
    const char *content = argc > 5 ? argv[5] : "pattern";
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
        if (strcmp(content, "json") == 0) fill_json(buf, size);
        else if (strcmp(content, "random") == 0) for (size_t i = 0; i < size; i++) buf[i] = (char)rnd();
        else for (size_t i = 0; i < size; i++) buf[i] = (char)(i * 31 + 7);
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
