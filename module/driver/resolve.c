/*
 * Host names, resolved before connecting (see resolve.h).
 */
#include <arpa/inet.h>
#include <stdio.h>
#include "driver/resolve.h"

int h2o_db_is_numeric_host(const char *host)
{
    unsigned char buf[sizeof(struct in6_addr)];
    return inet_pton(AF_INET, host, buf) == 1 || inet_pton(AF_INET6, host, buf) == 1;
}

int h2o_db_resolve(uv_loop_t *loop, uv_getaddrinfo_t *req, uv_getaddrinfo_cb cb, const char *host)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    return uv_getaddrinfo(loop, req, cb, host, NULL, &hints);
}

int h2o_db_resolved_address(int status, struct addrinfo *res, const char *host, char *addr, size_t addrsz, char *err, size_t errsz)
{
    if (status != 0 || res == NULL) {
        snprintf(err, errsz, "could not resolve host \"%s\": %s", host, uv_strerror(status));
        uv_freeaddrinfo(res);
        return -1;
    }
    addr[0] = '\0';
    if (res->ai_family == AF_INET)
        inet_ntop(AF_INET, &((struct sockaddr_in *)res->ai_addr)->sin_addr, addr, addrsz);
    else
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)res->ai_addr)->sin6_addr, addr, addrsz);
    uv_freeaddrinfo(res);
    return 0;
}
