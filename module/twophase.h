/*
 * Two-phase commit for partitioned binds with `twophase: ON` (PostgreSQL only):
 * transaction ids, the decision table, recovery at start-up, and the clean-up
 * of a commit whose request ended half-way.
 *
 * Transaction ids: h2o_db_<instance>_<txn>_<participant>. The instance id is
 * stable across restarts of one deployment (a hash of the host name, the config
 * file's real path and the bind's key; H2O_DB_INSTANCE overrides it), so that
 * recovery touches only this instance's leftovers.
 *
 * The decision to commit is a row in h2o_db_twophase (in the main bind's
 * database), committed before any COMMIT PREPARED. Recovery: a prepared
 * transaction whose row exists is committed; any other is rolled back.
 */
#ifndef h2o_db_twophase_h
#define h2o_db_twophase_h

#include <stddef.h>
#include "config/config.h"
#include "thread.h"

#define H2O_DB_TWOPHASE_TABLE "h2o_db_twophase"

/* A new transaction id prefix ("h2o_db_<instance>_<unique>") for `bind`. */
void h2o_db_twophase_new_txn(h2o_db_bind_t *bind, char *buf, size_t size);

/* Start-up (blocking, main thread): checks max_prepared_transactions on every participant,
 * creates the decision table and resolves this instance's leftovers. Prints what it did. */
int h2o_db_twophase_prepare(h2o_db_bind_t *bind);

/* A request ended while its two-phase commit was under way: resolve the transaction `txn`
 * of `bind` (and its partitions) in the background, a few times over the next seconds. */
void h2o_db_twophase_resolve_later(h2o_db_thread_t *thread, h2o_db_bind_t *bind, const char *txn);

#endif
