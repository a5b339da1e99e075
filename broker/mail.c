/* Mail service placeholder while the mail layer is being built (issue #3). */
#include "mb.h"

int mb_mail_init(mb_broker *b, char *errbuf, size_t errlen) { return 0; }
void mb_mail_free(mb_broker *b) {}
void mb_mail_intercept(mb_broker *b, mb_session *s, const char *message_id, json_t *params) {}
void mb_mail_on_spawn(mb_broker *b, mb_session *s, mb_agent *child, mb_agent *parent) {}
void mb_mail_on_agent_stop(mb_broker *b, mb_agent *a, const char *reason) {}
const mb_method mb_methods_mail[] = {{NULL, NULL, 0}};
