/*
 * libFuzzer target: YAML text → h2o_db_yaml_load_string → h2o_configurator_apply(dry_run = 1)
 * on a globalconf with the configurators the server registers (h2o_db_server_register_configurators,
 * module/server/load.c), as `h2o-db -t` does.
 *
 * Properties: no crash, no sanitizer report; a refused config names FILE:LINE:COLUMN (the
 * loader's errors are checked here; the configurators print theirs on stderr, which
 * scripts/fuzz silences with -close_fd_mask=2).
 *
 * Inputs that would run open-ended Ruby (mruby.handler compiles and runs its code at config
 * time) are skipped: a loop in a handler is the user's program, not a parser bug. stdin is
 * /dev/null, so `!file /dev/stdin` cannot block. Corpus in t/fuzz/corpus/config/.
 */
#include <ctype.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "h2o.h"
#include "h2o/configurator.h"
#include "h2o_db.h"
#include "config/config.h"
#include "mruby/mruby.h"
#include "server/server.h"
#include "server/yaml.h"

/* prints through the sanitizers' report channel (stderr is closed: -close_fd_mask=2) */
void __sanitizer_report_error_summary(const char *error_summary);

#define CONF_DIR  "/tmp/h2o-db-fuzz-config"
#define CONF_FILE CONF_DIR "/h2o-db.conf"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    int fd = open("/dev/null", O_RDONLY);
    if (fd >= 0) {
        dup2(fd, 0);
        close(fd);
    }
    mkdir(CONF_DIR, 0755);
    return 0;
}

static int runs_open_ended_ruby(const char *text, size_t len)
{
    static const char *const words[] = {
        "loop",   "while",   "until",   "for",   "redo",          "retry",          "times", "upto",  "downto",
        "step",   "each",    "sleep",   "Fiber", "Thread",        "exit",           "fork",  "IO",    "File",
        "`",      "system",  "require", "eval",  "define_method", "method_missing", "%x",    "spawn", "exec",
        "Kernel", "Process", "open",    "trap",  "at_exit",       "ObjectSpace",    "GC",    "send",  "instance_exec"};
    if (memmem(text, len, "mruby", 5) == NULL)
        return 0;
    for (size_t i = 0; i < sizeof(words) / sizeof(words[0]); ++i)
        if (memmem(text, len, words[i], strlen(words[i])) != NULL)
            return 1;
    return 0;
}

/* The loader's error: "FILE:LINE:COLUMN: ..." with 1-based numbers (FILE is the config, or a
 * file it includes with !file). */
static void check_loader_error(const char *err)
{
    /* FILE:LINE:COLUMN: before the first ": " */
    const char *end = strstr(err, ": "), *col = end, *line = NULL;
    int ok = 0;
    if (end != NULL) {
        while (col > err && isdigit((unsigned char)col[-1]))
            --col;
        if (col != end && col > err && col[-1] == ':') {
            line = col - 1;
            while (line > err && isdigit((unsigned char)line[-1]))
                --line;
            ok = line != col - 1 && line > err && line[-1] == ':' && strtoul(line, NULL, 10) >= 1 && strtoul(col, NULL, 10) >= 1 &&
                 strncmp(err, CONF_DIR "/", strlen(CONF_DIR) + 1) == 0;
        }
    }
    if (!ok) {
        char msg[2048];
        snprintf(msg, sizeof(msg), "fuzz_config: the loader's error does not start with FILE:LINE:COLUMN: (1-based): `%s`", err);
        __sanitizer_report_error_summary(msg);
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 65536 || runs_open_ended_ruby((const char *)data, size))
        return 0;
    char err[1024] = "";
    yoml_t *root = h2o_db_yaml_load_string(CONF_FILE, (const char *)data, size, err, sizeof(err));
    if (root == NULL) {
        check_loader_error(err);
        return 0;
    }
    static h2o_db_server_t server;
    memset(&server, 0, sizeof(server));
    server.config_path = CONF_FILE;
    server.shutdown_timeout_ms = H2O_DB_SHUTDOWN_TIMEOUT_MS;
    h2o_config_init(&server.globalconf);
    h2o_db_server_register_configurators(&server);
    h2o_configurator_apply(&server.globalconf, root, 1);
    yoml_free(root, NULL);
    h2o_config_dispose(&server.globalconf);

    /* what the server keeps for itself (it never frees them: it exits) */
    h2o_db_server_dispose_listens(&server);
    free(server.error_log);
    free(server.pid_file);
    free(server.user);
    free(server.memcached.host);
    free(server.memcached.prefix);
    h2o_db_tickets_free(server.tickets);
    return 0;
}
