/*
 * The smallest c.handler: answers "hello" (the HTTP ceiling in benchmarks).
 * Built against include/h2o_db.h alone; h2o-db provides every symbol.
 */
#include "h2o_db.h"

int hello_on_req(h2o_handler_t *self, h2o_req_t *req)
{
    static h2o_generator_t generator = {NULL, NULL};
    static const char body[] = "hello, world\n";
    req->res.status = 200;
    req->res.reason = "OK";
    req->res.content_length = sizeof(body) - 1;
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, H2O_STRLIT("text/plain"));
    h2o_start_response(req, &generator);
    h2o_iovec_t buf = h2o_iovec_init(body, sizeof(body) - 1);
    h2o_send(req, &buf, 1, 1);
    return 0;
}
