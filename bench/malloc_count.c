/*
 * An LD_PRELOAD shim for bench/malloc-count: counts malloc/calloc/realloc calls by the object
 * that called them (libh2o-db.so.0 and the h2o-db executable — project code — or libh2o, libpq,
 * libc, ...), and prints the counts on SIGUSR2 and at exit. Used to show that a one-row lookup
 * allocates nothing in project code beyond the one request-end chunk (h2o_mem_alloc_shared).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_OBJECTS 64

static void *(*real_malloc)(size_t);
static void *(*real_calloc)(size_t, size_t);
static void *(*real_realloc)(void *, size_t);

static struct {
    void *base;
    char name[64];
    unsigned long count;
} objects[MAX_OBJECTS];
static unsigned num_objects;
static __thread int inside;
static char bootstrap[1 << 16];
static int resolving;
static size_t bootstrap_used;

static void count(void *caller)
{
    if (inside)
        return;
    inside = 1;
    Dl_info info;
    void *base = NULL;
    const char *name = "?";
    if (dladdr(caller, &info) != 0) {
        base = info.dli_fbase;
        name = info.dli_fname;
    }
    unsigned i;
    for (i = 0; i < __atomic_load_n(&num_objects, __ATOMIC_ACQUIRE); ++i) {
        if (objects[i].base == base) {
            __atomic_add_fetch(&objects[i].count, 1, __ATOMIC_RELAXED);
            inside = 0;
            return;
        }
    }
    /* a new object (rare; a benign race only risks a duplicate row) */
    if (num_objects < MAX_OBJECTS) {
        const char *slash = strrchr(name, '/');
        objects[num_objects].base = base;
        snprintf(objects[num_objects].name, sizeof(objects[0].name), "%s", slash != NULL ? slash + 1 : name);
        objects[num_objects].count = 1;
        __atomic_add_fetch(&num_objects, 1, __ATOMIC_RELEASE);
    }
    inside = 0;
}

static void report(int sig)
{
    char buf[4096];
    size_t len = 0;
    len += snprintf(buf + len, sizeof(buf) - len, "malloc-count:");
    for (unsigned i = 0; i < num_objects && len < sizeof(buf) - 96; ++i)
        len += snprintf(buf + len, sizeof(buf) - len, " %s=%lu", objects[i].name, objects[i].count);
    len += snprintf(buf + len, sizeof(buf) - len, "\n");
    if (write(2, buf, len) < 0) {
    }
}

/* resolves the real functions the first time anything allocates (other libraries' constructors
 * may run before ours); dlsym may itself calloc: that comes from the bootstrap area */
static void resolve(void)
{
    if (real_malloc != NULL || resolving)
        return;
    resolving = 1;
    real_calloc = dlsym(RTLD_NEXT, "calloc");
    real_realloc = dlsym(RTLD_NEXT, "realloc");
    real_malloc = dlsym(RTLD_NEXT, "malloc");
    resolving = 0;
}

__attribute__((constructor)) static void init(void)
{
    resolve();
    signal(SIGUSR2, report);
}

void *malloc(size_t n)
{
    resolve();
    if (real_malloc == NULL) {
        void *p = bootstrap + bootstrap_used;
        bootstrap_used += (n + 15) & ~(size_t)15;
        return p;
    }
    count(__builtin_return_address(0));
    return real_malloc(n);
}

void *calloc(size_t n, size_t size)
{
    resolve();
    if (real_calloc == NULL) {
        /* dlsym itself may calloc before we know the real one */
        void *p = bootstrap + bootstrap_used;
        bootstrap_used += (n * size + 15) & ~(size_t)15;
        memset(p, 0, n * size);
        return p;
    }
    count(__builtin_return_address(0));
    return real_calloc(n, size);
}

void *realloc(void *p, size_t n)
{
    resolve();
    if (real_realloc == NULL || ((char *)p >= bootstrap && (char *)p < bootstrap + sizeof(bootstrap))) {
        /* before init, or growing a bootstrap block: move it to the bootstrap area (tiny, rare) */
        void *q = bootstrap + bootstrap_used;
        bootstrap_used += (n + 15) & ~(size_t)15;
        if (p != NULL)
            memcpy(q, p, n);
        return q;
    }
    count(__builtin_return_address(0));
    return real_realloc(p, n);
}

void free(void *p)
{
    static void (*real_free)(void *);
    if ((char *)p >= bootstrap && (char *)p < bootstrap + sizeof(bootstrap))
        return;
    if (real_free == NULL)
        real_free = dlsym(RTLD_NEXT, "free");
    real_free(p);
}
