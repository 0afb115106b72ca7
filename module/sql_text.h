/*
 * The text of a statement, as the session checks it (sql_text.c).
 */
#ifndef h2o_db_sql_text_h
#define h2o_db_sql_text_h

/* Whether sql holds more than one statement: a `;` outside quotes, dollar quotes and comments that
 * is followed by anything but blanks and comments. Any thread. */
int h2o_db_sql_several_statements(const char *sql);
/* Whether sql holds nothing but blanks and `;`. */
int h2o_db_sql_is_blank(const char *sql);

#endif
