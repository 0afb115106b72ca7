/*
 * MySQL's errors, in PostgreSQL's terms: which ones end the connection, the SQLSTATE a lost
 * connection reports, and a statement error as a result (statement timeouts answer TIMEOUT).
 */
#include <errmsg.h>
#include <mysqld_error.h>
#include <string.h>
#include "driver/mysql.h"

/* Client-side errors that concern one statement, not the connection. */
static int is_statement_client_error(unsigned err)
{
    switch (err) {
    case CR_NO_PREPARE_STMT:
    case CR_PARAMS_NOT_BOUND:
    case 2032: /* CR_DATA_TRUNCATED */
    case 2033: /* CR_NO_PARAMETERS_EXISTS */
    case CR_INVALID_PARAMETER_NO:
    case CR_INVALID_BUFFER_USE:
    case CR_UNSUPPORTED_PARAM_TYPE:
    case CR_NO_DATA:
    case CR_NO_STMT_METADATA:
    case 2053: /* CR_NO_RESULT_SET */
    case CR_NOT_IMPLEMENTED:
    case CR_STMT_CLOSED:
    case CR_NEW_STMT_METADATA:
    case CR_FUNCTION_NOT_SUPPORTED:
    case CR_BULK_WITHOUT_PARAMETERS:
    case CR_INVALID_STMT:
    case CR_INVALID_PARAMETER:
    case CR_ERR_STMT_PARAM_CALLBACK:
        return 1;
    default:
        return 0;
    }
}

int h2o_db_mysql_is_connection_error(unsigned err, const char *sqlstate)
{
    if ((err >= CR_MIN_ERROR && err <= CR_MAX_ERROR) || (err >= 5000 && err < 6000)) /* the connector's own */
        return !is_statement_client_error(err);
    switch (err) {
    case ER_SERVER_SHUTDOWN:
    case ER_CONNECTION_KILLED:
    case ER_NET_READ_ERROR:
    case ER_NET_READ_INTERRUPTED:
    case ER_NET_ERROR_ON_WRITE:
    case ER_NET_WRITE_INTERRUPTED:
    case ER_NET_PACKETS_OUT_OF_ORDER:
    case ER_NET_UNCOMPRESS_ERROR:
    case ER_ABORTING_CONNECTION:
    case ER_NEW_ABORTING_CONNECTION:
        return 1;
    }
    return sqlstate != NULL && strncmp(sqlstate, "08", 2) == 0;
}

const char *h2o_db_mysql_lost_sqlstate(unsigned err)
{
    return err == ER_SERVER_SHUTDOWN ? "57P01" : "08006";
}

void h2o_db_mysql_result_error(h2o_db_result_t *r, unsigned err, const char *sqlstate, const char *message)
{
    if (err == ER_STATEMENT_TIMEOUT || err == 3024 /* MySQL's ER_QUERY_TIMEOUT */ || err == ER_QUERY_INTERRUPTED) {
        h2o_db_result_init_error(r, H2O_DB_TIMEOUT, "57014", message);
        return;
    }
    if (sqlstate == NULL || strlen(sqlstate) != 5 || strcmp(sqlstate, "00000") == 0)
        sqlstate = "HY000";
    h2o_db_status_t status = h2o_db_status_for_sqlstate(sqlstate);
    h2o_db_result_init_error(r, status == H2O_DB_OK ? H2O_DB_SQL_ERROR : status, sqlstate, message);
}
