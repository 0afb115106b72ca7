/*
 * The fault driver's simulated server, its two-phase part (tests only): prepared transactions
 * (PREPARE TRANSACTION, COMMIT PREPARED, ROLLBACK PREPARED, pg_prepared_xacts) and the decision
 * table (h2o_db_twophase), shared by every connection of a bind, so that two-phase commits and
 * their resolver can be checked without a database.
 */
#include <stdio.h>
#include <string.h>
#include "fault_driver.h"

/* the simulated databases: prepared transactions and decisions */
enum { GID_PREPARED, GID_COMMITTED, GID_ROLLED_BACK };
struct gid {
    size_t bind_id;
    char gid[128];
    int state;
};
static struct gid gids[64];
static size_t num_gids;
static char decisions[16][128];
static size_t num_decisions;

static struct gid *find_gid(size_t bind_id, const char *gid)
{
    for (size_t i = 0; i < num_gids; ++i)
        if (gids[i].bind_id == bind_id && strcmp(gids[i].gid, gid) == 0)
            return gids + i;
    return NULL;
}

static void quoted(const char *sql, char *out, size_t size)
{
    const char *q = strchr(sql, '\'');
    size_t n = q != NULL ? strcspn(q + 1, "'") : 0;
    snprintf(out, size, "%.*s", (int)n, q != NULL ? q + 1 : "");
}

static int find_decision(const char *txn)
{
    for (size_t i = 0; i < num_decisions; ++i)
        if (strcmp(decisions[i], txn) == 0)
            return (int)i;
    return -1;
}

const char *fd_twophase_run(size_t bind_id, int *txn, const char *sql, const char *param, fd_rows_t *rows)
{
    char gid[128];
    if (strncmp(sql, "PREPARE TRANSACTION", 19) == 0) {
        if (*txn != FD_TXN_OPEN)
            return *txn == FD_TXN_ABORTED ? "25P02" : "25P01";
        quoted(sql, gid, sizeof(gid));
        if (find_gid(bind_id, gid) != NULL || num_gids == sizeof(gids) / sizeof(gids[0]))
            return "42710";
        gids[num_gids++] = (struct gid){bind_id, "", GID_PREPARED};
        snprintf(gids[num_gids - 1].gid, sizeof(gids[0].gid), "%s", gid);
        *txn = FD_TXN_IDLE;
    } else if (strncmp(sql, "COMMIT PREPARED", 15) == 0 || strncmp(sql, "ROLLBACK PREPARED", 17) == 0) {
        if (*txn != FD_TXN_IDLE)
            return "25001"; /* cannot run inside a transaction block */
        quoted(sql, gid, sizeof(gid));
        struct gid *g = find_gid(bind_id, gid);
        if (g == NULL || g->state != GID_PREPARED)
            return "42704";
        g->state = sql[0] == 'C' ? GID_COMMITTED : GID_ROLLED_BACK;
    } else if (strncmp(sql, "INSERT INTO h2o_db_twophase", 27) == 0) {
        if (find_decision(param) >= 0 || num_decisions == sizeof(decisions) / sizeof(decisions[0]))
            return "23505";
        snprintf(decisions[num_decisions++], sizeof(decisions[0]), "%s", param);
    } else if (strncmp(sql, "DELETE FROM h2o_db_twophase", 27) == 0) {
        int i = find_decision(param);
        if (i >= 0)
            memcpy(decisions[i], decisions[--num_decisions], sizeof(decisions[0]));
    } else if (strncmp(sql, "SELECT 1 FROM h2o_db_twophase", 29) == 0) {
        rows->column = "?column?";
        if (find_decision(param) >= 0)
            rows->values[rows->n++] = "1";
    } else if (strncmp(sql, "SELECT gid FROM pg_prepared_xacts", 33) == 0) {
        rows->column = "gid";
        for (size_t i = 0; i < num_gids && rows->n < 64; ++i)
            if (gids[i].bind_id == bind_id && gids[i].state == GID_PREPARED && strncmp(gids[i].gid, param, strlen(param)) == 0)
                rows->values[rows->n++] = gids[i].gid;
    }
    return NULL;
}

void fd_twophase_reset(void)
{
    num_gids = 0;
    num_decisions = 0;
}

size_t fd_prepared_left(char *first, size_t size)
{
    size_t n = 0;
    for (size_t i = 0; i < num_gids; ++i)
        if (gids[i].state == GID_PREPARED && n++ == 0)
            snprintf(first, size, "%s", gids[i].gid);
    return n;
}

int fd_txn_mixed(void)
{
    /* gids are TXN_INDEX: the same TXN committed on one participant and rolled back on another */
    for (size_t i = 0; i < num_gids; ++i) {
        for (size_t j = 0; j < num_gids; ++j) {
            const char *a = gids[i].gid, *b = gids[j].gid, *ua = strrchr(a, '_'), *ub = strrchr(b, '_');
            if (ua != NULL && ub != NULL && ua - a == ub - b && strncmp(a, b, (size_t)(ua - a)) == 0 &&
                gids[i].state == GID_COMMITTED && gids[j].state == GID_ROLLED_BACK)
                return 1;
        }
    }
    return 0;
}

static unsigned count_gids(int state)
{
    unsigned n = 0;
    for (size_t i = 0; i < num_gids; ++i)
        n += gids[i].state == state;
    return n;
}

unsigned fd_gids_committed(void)
{
    return count_gids(GID_COMMITTED);
}

unsigned fd_gids_rolled_back(void)
{
    return count_gids(GID_ROLLED_BACK);
}
