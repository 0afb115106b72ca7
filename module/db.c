/* placeholder until the db module lands */
#include "h2o_db.h"
#include "h2o/configurator.h"
void h2o_db_register_configurator(h2o_globalconf_t *conf) { (void)conf; }
int h2o_db_prepare(h2o_globalconf_t *conf) { (void)conf; return 0; }
int h2o_db_check(h2o_globalconf_t *conf, int connect) { (void)conf; (void)connect; return 0; }
const char *h2o_db_backends(void) { return "none"; }
