/*
 * c.handler: FILE.so:SYMBOL — a request handler written in C, loaded from a
 * shared object with dlopen. SYMBOL has h2o's on_req signature:
 *
 *     int SYMBOL(h2o_handler_t *self, h2o_req_t *req);   0 = handled, -1 = next handler
 *
 * Optional per-thread hooks, found by name next to it:
 *
 *     void SYMBOL_on_context_init(h2o_handler_t *self, h2o_context_t *ctx);
 *     void SYMBOL_on_context_dispose(h2o_handler_t *self, h2o_context_t *ctx);
 *
 * FILE is relative to the folder of the config file naming it. The object needs
 * no -l flags: h2o_db_* resolve against libh2o-db.so and h2o_* against libh2o.so,
 * which the h2o-db executable has loaded (globally) before it opens the object.
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "config/util.h"
#include "server/server.h"

typedef int (*on_req_cb)(h2o_handler_t *self, h2o_req_t *req);
typedef void (*context_cb)(h2o_handler_t *self, h2o_context_t *ctx);

static void *find_symbol(void *dl, const char *symbol, const char *suffix)
{
    char name[512];
    snprintf(name, sizeof(name), "%s%s", symbol, suffix);
    return dlsym(dl, name);
}

static int on_c_handler(h2o_configurator_command_t *cmd, h2o_configurator_context_t *ctx, yoml_t *node)
{
    const char *spec = node->data.scalar, *colon = strrchr(spec, ':');
    if (colon == NULL || colon == spec || colon[1] == '\0') {
        h2o_configurator_errprintf(cmd, node, "expected FILE.so:SYMBOL, not `%s`", spec);
        return -1;
    }
    char *file = strndup(spec, colon - spec), *path = h2o_db_config_path(node, file);
    const char *symbol = colon + 1;
    int ret = -1;

    void *dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (dl == NULL) {
        h2o_configurator_errprintf(cmd, node, "cannot load `%s`: %s", path, dlerror());
        goto Exit;
    }
    dlerror();
    on_req_cb on_req = (on_req_cb)(uintptr_t)dlsym(dl, symbol);
    if (on_req == NULL) {
        h2o_configurator_errprintf(cmd, node, "symbol `%s` not found in `%s`", symbol, path);
        dlclose(dl);
        goto Exit;
    }
    h2o_handler_t *handler = h2o_create_handler(ctx->pathconf, sizeof(*handler));
    handler->on_req = on_req;
    handler->on_context_init = (context_cb)(uintptr_t)find_symbol(dl, symbol, "_on_context_init");
    handler->on_context_dispose = (context_cb)(uintptr_t)find_symbol(dl, symbol, "_on_context_dispose");
    /* the object stays loaded until exit: its code may run until the last request ends */
    ret = 0;
Exit:
    free(file);
    free(path);
    return ret;
}

void h2o_db_c_handler_register_configurator(h2o_globalconf_t *conf)
{
    h2o_configurator_t *c = h2o_configurator_create(conf, sizeof(*c));
    h2o_configurator_define_command(
        c, "c.handler", H2O_CONFIGURATOR_FLAG_PATH | H2O_CONFIGURATOR_FLAG_EXPECT_SCALAR | H2O_CONFIGURATOR_FLAG_DEFERRED,
        on_c_handler);
}
