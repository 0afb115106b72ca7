/*
 * The server's life after start-up: serve until SIGTERM/SIGINT, and on SIGHUP reload.
 *
 * A reload reads and applies the config file again into a new server (its own globalconf, so
 * its own db binds, pools and TLS contexts). When that fails, the error is logged and the old
 * config keeps serving. When it succeeds, the new worker threads take descriptors of the same
 * listening sockets (an address the old config did not have is bound anew), start accepting,
 * and only then do the old threads stop accepting, finish what they have in flight (bounded by
 * their shutdown-timeout) and close their pools. A connection waiting in a socket's backlog is
 * taken by whichever threads still accept it: none is refused.
 *
 * What a reload does not change: the pid file, the error log and the user (privileges are
 * dropped once; a port below 1024 that the old config did not listen on cannot be bound).
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "config/config.h"
#include "h2o_db.h"
#include "server/server.h"

/* Configs that served before a reload or failed to load. libh2o 2.2.5's h2o_config_dispose frees
 * only part of a globalconf (what its own configurators made stays: the proxy's SSL_CTX, the header
 * commands, the status handlers' list), so the libh2o part of a retired config is kept, reachable
 * here (a few kB each); what h2o-db made for it — binds, sockets, TLS contexts — is freed. */
static H2O_VECTOR(h2o_db_server_t *) retired;

void h2o_db_server_retire(h2o_db_server_t *server)
{
    h2o_db_config_t *config = h2o_db_config_of(&server->globalconf);
    if (config != NULL)
        h2o_db_config_release(config);
    h2o_db_server_dispose_listens(server);
    h2o_db_tickets_free(server->tickets);
    server->tickets = NULL;
    free(server->workers);
    server->workers = NULL;
    h2o_vector_reserve(NULL, &retired, retired.size + 1);
    retired.entries[retired.size++] = server;
}

/* SIGHUP: the server that serves afterwards (the new one, or `old` when the new config failed). */
static h2o_db_server_t *reload(h2o_db_server_t *old)
{
    fprintf(stderr, "h2o-db: received SIGHUP, reloading %s\n", old->config_path);
    h2o_db_server_t *server = h2o_db_server_load(old->config_path, 0);
    if (server == NULL) {
        fprintf(stderr, "h2o-db: reload failed (see above); still serving the previous configuration\n");
        return old;
    }
    h2o_db_server_share_listeners(server, old);
    if (h2o_db_server_open_listeners(server) != 0 || h2o_db_prepare(&server->globalconf) != 0) {
        fprintf(stderr, "h2o-db: reload failed (see above); still serving the previous configuration\n");
        h2o_db_server_retire(server);
        return old;
    }
    if (h2o_db_server_start(server) != 0) {
        /* (its threads made contexts that were never disposed of: the config is left, not freed) */
        fprintf(stderr, "h2o-db: reload failed (see above); still serving the previous configuration\n");
        h2o_db_server_dispose_listens(server);
        return old;
    }
    if (h2o_db_server_stop(old) != 0)
        fprintf(stderr, "h2o-db: the previous configuration kept connections past its shutdown-timeout; its memory is left\n");
    else
        h2o_db_server_retire(old);
    fprintf(stderr, "h2o-db: reloaded %s\n", server->config_path);
    return server;
}

/* the config being served (reachable until exit, as the process keeps it) */
static h2o_db_server_t *serving;

int h2o_db_server_serve(h2o_db_server_t *server)
{
    serving = server;
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGHUP);
    /* workers inherit the mask: only the main thread takes these signals, with sigwait */
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    if (h2o_db_server_start(server) != 0)
        return 1;
    int sig;
    while (sigwait(&sigs, &sig) == 0 && sig == SIGHUP)
        serving = server = reload(server);
    fprintf(stderr, "h2o-db: received %s, shutting down gracefully\n", sig == SIGTERM ? "SIGTERM" : "SIGINT");
    h2o_db_server_stop(server);
    return 0;
}
