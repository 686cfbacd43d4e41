/* Preloaded into replayed programs (LD_PRELOAD) when the recording holds what OpenSSL's random
 * generator returned: RAND_bytes and RAND_bytes_ex return the recorded bytes (RAND_priv_bytes,
 * never recorded, stays OpenSSL's),
 * asked of the replayer through a getrandom call with flags no kernel accepts (the sandbox's
 * seccomp filter hands every getrandom to the replayer). Once the recorded bytes are used up
 * (the replayer answers ENOSYS), the real functions answer. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Keep in step with replay::notify::LIBRARY_RANDOM. */
#define RETRACE_LIBRARY_RANDOM 0x52540000u

static int recorded(unsigned char *buf, size_t num) {
    return num == 0 || syscall(SYS_getrandom, buf, num, RETRACE_LIBRARY_RANDOM) == (long)num;
}

typedef int (*rand_fn)(unsigned char *, int);
typedef int (*rand_ex_fn)(void *, unsigned char *, size_t, unsigned int);

int RAND_bytes(unsigned char *buf, int num) {
    if (num >= 0 && recorded(buf, (size_t)num)) return 1;
    rand_fn real = (rand_fn)dlsym(RTLD_NEXT, "RAND_bytes");
    return real ? real(buf, num) : 0;
}

int RAND_bytes_ex(void *ctx, unsigned char *buf, size_t num, unsigned int strength) {
    if (recorded(buf, num)) return 1;
    rand_ex_fn real = (rand_ex_fn)dlsym(RTLD_NEXT, "RAND_bytes_ex");
    return real ? real(ctx, buf, num, strength) : 0;
}
