/*
 * Host names, resolved before connecting: libpq and Connector/C would resolve them synchronously,
 * blocking the loop, so the drivers resolve them on libuv's thread pool (uv_getaddrinfo) and hand
 * the client library the numeric address.
 */
#ifndef h2o_db_driver_resolve_h
#define h2o_db_driver_resolve_h

#include <stddef.h>
#include <uv.h>

/* Whether host is an IPv4 or IPv6 address already. */
int h2o_db_is_numeric_host(const char *host);
/* Starts resolving host (TCP, any family); cb runs on the loop. Returns uv_getaddrinfo's status. */
int h2o_db_resolve(uv_loop_t *loop, uv_getaddrinfo_t *req, uv_getaddrinfo_cb cb, const char *host);
/* In cb: frees res; returns 0 with its first address as text in addr (INET6_ADDRSTRLEN bytes is
 * enough), or -1 with err set ("could not resolve host ..."). */
int h2o_db_resolved_address(int status, struct addrinfo *res, const char *host, char *addr, size_t addrsz, char *err, size_t errsz);

#endif
