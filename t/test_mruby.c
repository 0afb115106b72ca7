/*
 * mruby handlers with H2O::DB (docs/mruby.md, docs/architecture.md), against the real h2o-db, a real
 * PostgreSQL (from scripts/test) and SQLite files: typed rows, transactions verified in
 * the database, suspension (two queries of one thread wait in PostgreSQL at once), KeyError,
 * config errors with the Ruby line, exceptions (500, logged, VM still usable), Fiber
 * bookkeeping after 1000 requests and abandoned ones, the Rack env and response,
 * fallthrough, JSON, blocking classes removed, db.for, H2O::DB::View, what H2O 2.2.5's own
 * mruby handler does and its t/50mruby.t checks (the env's SERVER_* keys and setenv variables,
 * PATH_INFO as sent, rack.input closed after its request, a 399's headers and HTTP/2 push, the
 * response's framing, errors logged as "[h2o_mruby] in request:..."), and the demo's notes API
 * (demo/notes.rb).
 */
#include <arpa/inet.h>
#include <curl/curl.h>
#include <libgen.h>
#include <limits.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>
#include "db_util.h"

/* ---- the apps ---- */

static const char TYPED_PG[] =
    "proc do |env|\n"
    "  db = H2O::DB.session(env)\n"
    "  rows = db.query(\"SELECT $1::int AS i, $2::float8 AS f, $3::boolean AS t, $4::boolean AS b, $5::text AS n, \" \\\n"
    "                  \"$6::text AS s, 9007199254740993::bigint AS big, 2.50::numeric AS num, '\\\\x00ff'::bytea AS bytes, \" \\\n"
    "                  \"'{\\\"k\\\": [1]}'::jsonb AS j, 'NaN'::float8 AS nan\",\n"
    "                  [42, 1.5, true, false, nil, \"h\\u00e9llo \\\"q\\\"\"])\n"
    "  r = rows[0]\n"
    "  types = r.keys.map { |k| \"#{k}:#{r[k].class}\" }.join(\",\")\n"
    "  r[\"bytes\"] = r[\"bytes\"].bytes\n"
    "  [200, {\"content-type\" => \"application/json\"}, [types, \"\\n\", H2O::DB.to_json(rows), \"\\n\"]]\n"
    "end\n";

static const char TYPED_SQLITE[] = "proc do |env|\n"
                                   "  db = H2O::DB.session(env, \"sa_lite\")\n"
                                   "  db.execute(\"DELETE FROM kv\")\n"
                                   "  n = db.execute(\"INSERT INTO kv (k, i, f, s) VALUES ($1, $2, $3, $4), ($5, $6, $7, $8)\",\n"
                                   "                 [\"a\", 41, 0.25, \"x\", \"b\", -7, nil, nil])\n"
                                   "  rows = db.query(\"SELECT k, i + 1 AS i, f * 2 AS f, s FROM kv ORDER BY k\")\n"
                                   "  types = rows[0].keys.map { |k| \"#{k}:#{rows[0][k].class}\" }.join(\",\")\n"
                                   "  [200, {}, [\"#{n} \", types, \" \", JSON.generate(rows)]]\n"
                                   "end\n";

static const char TXN_RB[] = "proc do |env|\n"
                             "  db = H2O::DB.session(env)\n"
                             "  case env[\"QUERY_STRING\"]\n"
                             "  when \"setup\"\n"
                             "    db.execute(\"DROP TABLE IF EXISTS mrb_txn\")\n"
                             "    db.execute(\"CREATE TABLE mrb_txn (id int PRIMARY KEY, note text)\")\n"
                             "    [200, {}, [\"ready\"]]\n"
                             "  when \"commit\"\n"
                             "    r = db.transaction do\n"
                             "      db.execute(\"INSERT INTO mrb_txn VALUES (1, 'one')\")\n"
                             "      db.execute(\"INSERT INTO mrb_txn VALUES ($1, $2)\", [2, \"two\"])\n"
                             "      :done\n"
                             "    end\n"
                             "    [200, {}, [\"committed #{r}\"]]\n"
                             "  when \"rollback\"\n"
                             "    begin\n"
                             "      db.transaction do\n"
                             "        db.execute(\"INSERT INTO mrb_txn VALUES (3, 'three')\")\n"
                             "        raise \"changed my mind\"\n"
                             "      end\n"
                             "      [200, {}, [\"not reached\"]]\n"
                             "    rescue RuntimeError => e\n"
                             "      [200, {}, [\"rolled back: #{e.message}\"]]\n"
                             "    end\n"
                             "  when \"sqlerror\"\n"
                             "    db.transaction do\n"
                             "      db.execute(\"INSERT INTO mrb_txn VALUES (4, 'four')\")\n"
                             "      db.execute(\"INSERT INTO mrb_txn VALUES (1, 'again')\")\n"
                             "    end\n"
                             "    [200, {}, [\"not reached\"]]\n"
                             "  when \"uncaught\"\n"
                             "    db.transaction do\n"
                             "      db.execute(\"INSERT INTO mrb_txn VALUES (5, 'five')\")\n"
                             "      raise ArgumentError, \"secret detail 5\"\n"
                             "    end\n"
                             "  when \"failed-commit\"\n"
                             "    begin\n"
                             "      db.transaction do\n"
                             "        db.execute(\"INSERT INTO mrb_txn VALUES (6, 'six')\")\n"
                             "        begin\n"
                             "          db.execute(\"INSERT INTO mrb_txn VALUES (1, 'again')\")\n"
                             "        rescue H2O::DB::Error\n"
                             "        end\n"
                             "      end\n"
                             "      [200, {}, [\"committed?\"]]\n"
                             "    rescue H2O::DB::Error => e\n"
                             "      [200, {}, [e.sqlstate]]\n"
                             "    end\n"
                             "  when \"break\"\n"
                             "    [1].each { db.transaction { db.execute(\"INSERT INTO mrb_txn VALUES (7, 'seven')\"); break } }\n"
                             "    [200, {}, [\"left with break\"]]\n"
                             "  when \"nested\"\n"
                             "    begin\n"
                             "      db.transaction { db.transaction { } }\n"
                             "    rescue H2O::DB::Error => e\n"
                             "      [200, {}, [e.sqlstate]]\n"
                             "    end\n"
                             "  end\n"
                             "end\n";

static const char ERRORS_RB[] = "proc do |env|\n"
                                "  db = H2O::DB.session(env)\n"
                                "  case env[\"PATH_INFO\"]\n"
                                "  when \"/key\"\n"
                                "    begin\n"
                                "      H2O::DB.session(env, env[\"QUERY_STRING\"])\n"
                                "      [200, {}, [\"attached\"]]\n"
                                "    rescue H2O::DB::KeyError => e\n"
                                "      [200, {}, [\"KeyError: #{e.message}\"]]\n"
                                "    end\n"
                                "  when \"/key-uncaught\"\n"
                                "    H2O::DB.session(env, \"sa_nowhere\")\n"
                                "  when \"/sqlstate\"\n"
                                "    begin\n"
                                "      db.query(\"SELECT * FROM mrb_no_such_table\")\n"
                                "    rescue H2O::DB::Error => e\n"
                                "      [200, {}, [\"#{e.class} #{e.sqlstate} #{e.status} #{e.message}\"]]\n"
                                "    end\n"
                                "  when \"/dberror\"\n"
                                "    db.query(\"SELECT 1/0\")\n"
                                "  when \"/typeerror\"\n"
                                "    out = []\n"
                                "    [[{}], [:sym], [1, [2]], \"notanarray\"].each do |params|\n"
                                "      begin\n"
                                "        db.query(\"SELECT $1\", params)\n"
                                "        out << \"accepted\"\n"
                                "      rescue TypeError => e\n"
                                "        out << e.message\n"
                                "      end\n"
                                "    end\n"
                                "    [200, {}, [out.join(\"\\n\")]]\n"
                                "  when \"/several\"\n"
                                "    begin\n"
                                "      db.query(\"SELECT 1; SELECT 2\")\n"
                                "    rescue ArgumentError => e\n"
                                "      [200, {}, [\"refused: #{e.message}\"]]\n"
                                "    end\n"
                                "  when \"/boom\"\n"
                                "    raise \"secret boom detail\"\n"
                                "  when \"/boom-late\"\n"
                                "    db.query(\"SELECT 1\")\n"
                                "    raise NoMethodError, \"secret late detail\"\n"
                                "  when \"/badresponse\"\n"
                                "    42\n"
                                "  when \"/order\"\n"
                                "    db.execute(\"DROP TABLE IF EXISTS mrb_order\")\n"
                                "    db.execute(\"CREATE TABLE mrb_order (n int)\")\n"
                                "    (1..5).each { |i| db.execute(\"INSERT INTO mrb_order VALUES ($1)\", [i]) }\n"
                                "    r = db.query(\"SELECT string_agg(n::text, ',') AS s FROM mrb_order\")[0]\n"
                                "    [200, {}, [r[\"s\"]]]\n"
                                "  when \"/gate\"\n"
                                "    db.query(\"SELECT 1 AS x FROM pg_advisory_xact_lock_shared(#{env['QUERY_STRING'].to_i})\")\n"
                                "    [200, {}, [\"passed\"]]\n"
                                "  when \"/one\"\n"
                                "    [200, {}, [db.query(\"SELECT $1::int + 1 AS n\", [1])[0][\"n\"].to_s]]\n"
                                "  else\n"
                                "    [200, {}, [\"ok\"]]\n"
                                "  end\n"
                                "end\n";

static const char RACK_RB[] =
    "proc do |env|\n"
    "  case env[\"QUERY_STRING\"]\n"
    "  when \"input\"\n"
    "    input = env[\"rack.input\"]\n"
    "    first = input.gets\n"
    "    rest = input.read\n"
    "    input.rewind\n"
    "    lines = []\n"
    "    input.each { |l| lines << l }\n"
    "    env[\"rack.errors\"].puts \"rack.errors line\"\n"
    "    keys = %w(REQUEST_METHOD SCRIPT_NAME PATH_INFO QUERY_STRING SERVER_NAME SERVER_ADDR SERVER_PORT SERVER_PROTOCOL\n"
    "              SERVER_SOFTWARE REMOTE_ADDR CONTENT_TYPE CONTENT_LENGTH HTTP_HOST rack.url_scheme)\n"
    "    out = keys.map { |k| \"#{k}=#{env[k]}\" }\n"
    "    out << \"first=#{first.inspect} rest=#{rest.inspect} lines=#{lines.size} version=#{env['rack.version'].inspect}\"\n"
    "    [200, {\"content-type\" => \"text/plain\"}, [out.join(\"\\n\"), \"\\n\"]]\n"
    "  when \"headers\"\n"
    "    body = Object.new\n"
    "    def body.each; yield \"ab\"; yield \"cd\"; end\n"
    "    def body.close; H2O::DB.__stderr(\"body closed\\n\"); end\n"
    "    [201, {\"X-Multi\" => \"a\\nb\", \"x-arr\" => [\"c\", \"d\"]}, body]\n"
    "  when \"short\"\n"
    "    [200, {\"Content-Length\" => \"999\"}, [\"ab\", \"cd\"]]\n"
    "  when \"fall\"\n"
    "    [399, {}, []]\n"
    "  when \"fall-late\"\n"
    "    H2O::DB.session(env).query(\"SELECT 1\")\n"
    "    [399, {\"x-late\" => \"kept\"}, []]\n"
    "  else\n"
    "    [200, {}, [\"first handler\"]]\n"
    "  end\n"
    "end\n";

static const char JSON_RB[] =
    "proc do |env|\n"
    "  obj = {\"s\" => \"q\\\"b\\\\n\\n\\t\\x01\\x1f/\", :sym => :val, \"u\" => \"h\\u00e9llo \\u2713 \\u{1F600}\",\n"
    "         \"bad\" => \"a\\xffb\", \"ls\" => \"\\u2028\", \"a\" => [1, -2, 1.5, 1.0e20, 0.1, nil, true, false],\n"
    "         \"nan\" => 0.0 / 0.0, \"inf\" => -1.0 / 0.0, \"h\" => {1 => \"x\"}, \"big\" => 4611686018427387903}\n"
    "  deep = []\n"
    "  cur = deep\n"
    "  200.times { n = []; cur << n; cur = n }\n"
    "  cycle = begin; JSON.generate(deep); \"no error\"; rescue ArgumentError => e; e.message; end\n"
    "  [200, {\"content-type\" => \"application/json\"}, [JSON.generate(obj), \"\\n\", [1, \"x\"].to_json, \"\\n\", cycle]]\n"
    "end\n";

static const char SAFETY_RB[] = "proc do |env|\n"
                                "  out = []\n"
                                "  out << (Object.const_defined?(:TCPSocket) ? \"TCPSocket\" : \"-\")\n"
                                "  out << (Object.const_defined?(:Socket) ? \"Socket\" : \"-\")\n"
                                "  out << (IO.respond_to?(:popen) ? \"popen\" : \"-\")\n"
                                "  out << (respond_to?(:`, true) ? \"backtick\" : \"-\")\n"
                                "  path = env[\"QUERY_STRING\"]\n"
                                "  out << begin; File.open(path, \"w\"); \"opened\"; rescue NotImplementedError; \"refused\"; end\n"
                                "  out << (File.exist?(path) ? \"created\" : \"-\")\n"
                                "  out << (File.open(__FILE__).read.include?(\"const_defined\") ? \"read\" : \"-\")\n"
                                "  [200, {}, [out.join(\" \")]]\n"
                                "end\n";

static const char VIEW_RB[] = "class MrbView\n"
                              "  include H2O::DB::View\n"
                              "  def initialize(env)\n"
                              "    @env = env\n"
                              "  end\n"
                              "  def response\n"
                              "    a = sa_session(@env).query(\"SELECT current_database() AS d\")[0][\"d\"]\n"
                              "    b = sa_session(\"sa_lite\").query(\"SELECT 2 AS two\")[0][\"two\"]\n"
                              "    c = sa_session(@env, \"sa_off\").query(\"SELECT current_database() AS d\")[0][\"d\"]\n"
                              "    [200, {}, [\"#{a} #{b} #{c}\"]]\n"
                              "  end\n"
                              "end\n"
                              "proc { |env| MrbView.new(env).response }\n";

static const char FOR_RB[] = "proc do |env|\n"
                             "  db = H2O::DB.session(env)\n"
                             "  audit = db.for(\"mrb_audit\")\n"
                             "  a = audit.query(\"SELECT current_database() AS d\")[0][\"d\"]\n"
                             "  b = db.for(\"anything_else\").query(\"SELECT current_database() AS d\")[0][\"d\"]\n"
                             "  [200, {}, [\"#{a} #{b} #{db.for('anything_else').equal?(db)} #{audit.equal?(db)}\"]]\n"
                             "end\n";

static const char FIBERS_RB[] = "proc do |env|\n"
                                "  GC.start\n"
                                "  [200, {}, [\"#{H2O::DB.live_fibers} #{ObjectSpace.count_objects[:T_FIBER].to_i}\"]]\n"
                                "end\n";

/* Behaviour as H2O 2.2.5's mruby handler has it (its t/50mruby.t and t/40env.t): the env's server
 * keys, raw PATH_INFO, setenv, rack.input, 399 with headers, the response's framing. */
static const char COMPAT_RB[] =
    "KEPT = []\n"
    "proc do |env|\n"
    "  case env[\"QUERY_STRING\"]\n"
    "  when \"paths\" then [200, {}, [\"#{env['SCRIPT_NAME']}|#{env['PATH_INFO']}\"]]\n"
    "  when \"env\"\n"
    "    keys = %w(SERVER_NAME SERVER_ADDR SERVER_PORT SERVER_SOFTWARE HTTP_HOST GLOBAL_VAR HOST_VAR PATH_VAR FROM_FIRST)\n"
    "    [200, {}, [keys.map { |k| \"#{k}=#{env[k].inspect}\" }.join(\" \")]]\n"
    "  when \"push\" then [399, {\"link\" => \"</push/pushed.js>; rel=preload\", \"x-kept\" => \"yes\"}, []]\n"
    "  when \"nopush\" then [399, {\"link\" => \"</push/pushed.js>; rel=preload; nopush\"}, []]\n"
    "  when \"keep-input\"\n"
    "    KEPT[0] = env[\"rack.input\"]\n"
    "    [200, {}, [KEPT[0].read]]\n"
    "  when \"old-input\"\n"
    "    r = [:read, :gets, :rewind, :each].map do |m|\n"
    "      begin; KEPT[0].send(m) { }; \"#{m}: no error\"; rescue IOError => e; \"#{m}: IOError #{e.message}\"; end\n"
    "    end\n"
    "    [200, {}, [r.join(\", \")]]\n"
    "  when \"input\"\n"
    "    i = env[\"rack.input\"]\n"
    "    out = [i.read(1), i.each.to_a, i.read(1), i.read, i.rewind.equal?(i)]\n"
    "    buf = \"x\"\n"
    "    i.read(2, buf)\n"
    "    out += [buf, i.byteindex(10), i.gets, i.gets, i.gets, i.byteindex(10), i.map(&:size)]\n"
    "    [200, {}, [out.inspect]]\n"
    "  when \"204\" then [204, {\"x-a\" => \"1\"}, []]\n"
    "  when \"length\"\n"
    "    [200, {\"content-length\" => \"2\", \"connection\" => \"close\", \"transfer-encoding\" => \"chunked\"}, [\"ab\", "
    "\"cd\"]]\n"
    "  when \"raise\" then raise \"compat failure\"\n"
    "  else [200, {\"content-type\" => \"text/plain\"}, [\"body\"]]\n"
    "  end\n"
    "end\n";

static const char COMPAT_CONF[] =
    "listen: {host: 127.0.0.1, port: @PORT@}\n"
    "num-threads: 1\n"
    "server-name: h2o-db-compat/1.0\n"
    "setenv: {GLOBAL_VAR: g}\n"
    "hosts:\n"
    "  \"compat.example:@PORT@\":\n"
    "    setenv: {HOST_VAR: h}\n"
    "    paths:\n"
    "      /:\n"
    "        mruby.handler-file: compat.rb\n"
    "      /abc:\n"
    "        setenv: {PATH_VAR: p}\n"
    "        unsetenv: [HOST_VAR]\n"
    "        mruby.handler-file: compat.rb\n"
    "      \"/foo bar\":\n"
    "        mruby.handler-file: compat.rb\n"
    "      /push:\n"
    "        mruby.handler-file: compat.rb\n"
    "        file.dir: @DIR@/www\n"
    "      /fall:\n"
    "        mruby.handler: |\n"
    "          proc { |env| [399, {\"x-fallthru-set-from-first\" => \"1\", \"x-kept\" => \"yes\"}, []] }\n"
    "        mruby.handler-file: compat.rb\n"
    "      /inline-raise:\n"
    "        mruby.handler: proc { |env| raise \"inline failure\" }\n";

static const char CONF[] = "listen: {host: 127.0.0.1, port: @PORT@}\n"
                           "num-threads: 1\n"
                           "db.bind:\n"
                           "  - url: @PG@\n"
                           "    binds: {mrb_audit: sa_off}\n"
                           /* no pipelining: two queries at the gate at once need two connections */
                           "    pool: {pipeline-depth: 1}\n"
                           "  - url: sqlite:///lite.sqlite3\n"
                           "    key: sa_lite\n"
                           "    schema: lite.sql\n"
                           "  - url: @PGDB2@\n"
                           "    key: sa_off\n"
                           "    middleware: OFF\n"
                           "hosts:\n"
                           "  default:\n"
                           "    paths:\n"
                           "      /typed:\n"
                           "        mruby.handler-file: typed.rb\n"
                           "      /lite:\n"
                           "        mruby.handler-file: lite.rb\n"
                           "      /txn:\n"
                           "        mruby.handler-file: txn.rb\n"
                           "      /e:\n"
                           "        mruby.handler-file: errors.rb\n"
                           "      /use:\n"
                           "        db.use: sa_off\n"
                           "        mruby.handler-file: errors.rb\n"
                           "      /rack:\n"
                           "        mruby.handler-file: rack.rb\n"
                           "        mruby.handler: |\n"
                           "          lambda { |env| [200, {}, [\"second handler #{env['QUERY_STRING']}\"]] }\n"
                           "      /static:\n"
                           "        mruby.handler-file: rack.rb\n"
                           "        file.dir: @DIR@/www\n"
                           "      /inline:\n"
                           "        mruby.handler: |\n"
                           "          # a comment line\n"
                           "          proc { |env| [200, {\"content-type\" => \"text/plain\"}, [\"inline #{__LINE__}\"]] }\n"
                           "      /json:\n"
                           "        mruby.handler-file: json.rb\n"
                           "      /safety:\n"
                           "        mruby.handler-file: safety.rb\n"
                           "      /view:\n"
                           "        db.use: [sa_off]\n"
                           "        mruby.handler-file: view.rb\n"
                           "      /for:\n"
                           "        mruby.handler-file: for.rb\n"
                           "      /fibers:\n"
                           "        mruby.handler-file: fibers.rb\n";

/* ---- helpers ---- */

static th_server_t server;
static char *dir;

static void setup(void)
{
    memset(&server, 0, sizeof(server));
    dir = NULL;
}

static void teardown(void)
{
    if (server.pid > 0) {
        kill(server.pid, SIGKILL);
        server.pid = 0;
    }
    free(dir);
    dir = NULL;
}

static void write_apps(const char *d)
{
    struct {
        const char *name, *text;
    } files[] = {{"typed.rb", TYPED_PG},
                 {"lite.rb", TYPED_SQLITE},
                 {"txn.rb", TXN_RB},
                 {"errors.rb", ERRORS_RB},
                 {"rack.rb", RACK_RB},
                 {"json.rb", JSON_RB},
                 {"safety.rb", SAFETY_RB},
                 {"view.rb", VIEW_RB},
                 {"for.rb", FOR_RB},
                 {"fibers.rb", FIBERS_RB},
                 {"lite.sql", "CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, i INTEGER, f REAL, s TEXT);\n"}};
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); ++i)
        free(th_write_file(d, files[i].name, files[i].text, 0));
    char *www;
    ck_assert(asprintf(&www, "%s/www", d) > 0);
    mkdir(www, 0755);
    free(th_write_file(www, "index.html", "static after fallthrough\n", 0));
    free(www);
}

static void start(void)
{
    th_require_pg();
    dir = th_tmpdir();
    write_apps(dir);
    int ret = th_server_start_in(&server, dir, CONF);
    ck_assert_msg(ret == 0, "server did not start: %s", th_server_log(&server));
}

static void stop(void)
{
    int status = th_server_stop(&server, 15000);
    char *log = th_server_log(&server);
    ck_assert_msg(status == 0, "exit status %d; log: %s", status, log);
    free(log);
}

static void request(th_response_t *res, int version, const char *method, const char *path, const char *body)
{
    char *url = th_url(&server, path);
    ck_assert_msg(th_http(res, version, method, url, body) == 0, "%s %s failed (curl %d)", method != NULL ? method : "GET", path,
                  res->curl_error);
    free(url);
}

/* GET path; asserts the status and returns the body (malloc'd). */
static char *get(const char *path, long status)
{
    th_response_t res;
    request(&res, TH_HTTP1, NULL, path, NULL);
    ck_assert_msg(res.status == status, "GET %s: status %ld, expected %ld; body: %s", path, res.status, status, res.body);
    char *body = strdup(res.body);
    th_response_free(&res);
    return body;
}

static void expect_get(const char *path, long status, const char *body)
{
    char *got = get(path, status);
    ck_assert_msg(strcmp(got, body) == 0, "GET %s: expected `%s`, got `%s`", path, body, got);
    free(got);
}

static int log_contains(const char *needle)
{
    char *log = th_server_log(&server);
    int found = strstr(log, needle) != NULL;
    free(log);
    return found;
}

static int log_has(void *needle)
{
    return log_contains(needle);
}

/* The line of `needle` in `text`, 1-based. */
static int line_of(const char *text, const char *needle)
{
    const char *at = strstr(text, needle);
    ck_assert_msg(at != NULL, "%s", needle);
    int line = 1;
    for (const char *p = text; p < at; ++p)
        line += *p == '\n';
    return line;
}

/* ---- tests ---- */

START_TEST(query_with_params_returns_typed_rows)
{
    start();
    expect_get("/typed", 200,
               "i:Integer,f:Float,t:TrueClass,b:FalseClass,n:NilClass,s:String,big:Integer,num:String,bytes:String,j:String,"
               "nan:Float\n"
               "[{\"i\":42,\"f\":1.5,\"t\":true,\"b\":false,\"n\":null,\"s\":\"h\xc3\xa9llo \\\"q\\\"\",\"big\":9007199254740993,"
               "\"num\":\"2.50\",\"bytes\":[0,255],\"j\":\"{\\\"k\\\": [1]}\",\"nan\":\"NaN\"}]\n");
    /* the same over HTTP/2 */
    th_response_t res;
    request(&res, TH_HTTP2, NULL, "/typed", NULL);
    ck_assert_int_eq(res.status, 200);
    ck_assert_int_eq(res.http_version, 2);
    ck_assert_msg(strstr(res.body, "\"i\":42") != NULL, "%s", res.body);
    th_response_free(&res);
    /* SQLite: values typed by what is stored */
    expect_get("/lite", 200,
               "2 k:String,i:Integer,f:Float,s:String "
               "[{\"k\":\"a\",\"i\":42,\"f\":0.5,\"s\":\"x\"},{\"k\":\"b\",\"i\":-6,\"f\":null,\"s\":null}]");
    stop();
}
END_TEST

START_TEST(transaction_commits_or_rolls_back_in_the_database)
{
    start();
    expect_get("/txn?setup", 200, "ready");
    expect_get("/txn?commit", 200, "committed done");
    ck_assert_int_eq(th_pg_count("SELECT count(*) FROM mrb_txn WHERE id IN (1, 2)"), 2);

    expect_get("/txn?rollback", 200, "rolled back: changed my mind");
    ck_assert_int_eq(th_pg_count("SELECT count(*) FROM mrb_txn WHERE id = 3"), 0);

    /* a failed statement inside: rolled back, the H2O::DB::Error re-raised and answered as h2o_db_send_error does */
    expect_get("/txn?sqlerror", 500, "database error (SQLSTATE 23505)\n");
    ck_assert_int_eq(th_pg_count("SELECT count(*) FROM mrb_txn WHERE id = 4"), 0);

    /* any other exception: rolled back, 500 without the detail, which goes to the log */
    char *body = get("/txn?uncaught", 500);
    ck_assert_msg(strstr(body, "secret") == NULL, "%s", body);
    free(body);
    ck_assert_int_eq(th_pg_count("SELECT count(*) FROM mrb_txn WHERE id = 5"), 0);
    ck_assert_msg(th_wait_until(log_has, "secret detail 5 (ArgumentError)", 10000), "not logged");

    /* a failed statement rescued inside the block: COMMIT is refused, the transaction rolled back */
    expect_get("/txn?failed-commit", 200, "25P02");
    ck_assert_int_eq(th_pg_count("SELECT count(*) FROM mrb_txn WHERE id = 6"), 0);

    /* leaving the block with break commits; BEGIN inside a transaction is refused */
    expect_get("/txn?break", 200, "left with break");
    ck_assert_int_eq(th_pg_count("SELECT count(*) FROM mrb_txn WHERE id = 7"), 1);
    expect_get("/txn?nested", 200, "25001");

    /* nothing was left open: the session's next transaction works */
    expect_get("/txn?commit", 500, "database error (SQLSTATE 23505)\n");
    ck_assert_int_eq(th_pg_count("SELECT count(*) FROM mrb_txn"), 3);
    stop();
}
END_TEST

struct parallel_call {
    int version;
    const char *const *urls;
    th_response_t res[2];
};

static void *parallel_main(void *arg)
{
    struct parallel_call *c = arg;
    th_http_parallel(c->res, 2, c->version, c->urls);
    return NULL;
}

START_TEST(queries_suspend_the_fiber_not_the_thread)
{
    start();
    expect_get("/e/one", 200, "2"); /* a connection is open */
    for (int version = TH_HTTP1; version <= TH_HTTP2; ++version) {
        /* one worker thread, two requests whose queries wait at a closed gate: the second query
         * reaches PostgreSQL while the first still waits only if the first one's Fiber was
         * suspended, not the thread */
        long key = db_gate_key();
        char *path = th_fmt("/e/gate?%ld", key), *url = th_url(&server, path);
        const char *urls[] = {url, url};
        struct parallel_call call = {version, urls};
        PGconn *gate = db_gate_close(key);
        pthread_t tid;
        ck_assert(pthread_create(&tid, NULL, parallel_main, &call) == 0);
        int both = db_gate_wait_for(key, 2);
        long seen = db_gate_waiting(key);
        db_gate_open(gate);
        pthread_join(tid, NULL);
        ck_assert_msg(both, "HTTP/%d: %ld of the 2 queries waited in PostgreSQL at once: the thread was blocked",
                      version == TH_HTTP1 ? 1 : 2, seen);
        for (int i = 0; i < 2; ++i) {
            ck_assert_msg(call.res[i].curl_error == 0 && call.res[i].status == 200, "request %d: curl %d, status %ld", i,
                          call.res[i].curl_error, call.res[i].status);
            ck_assert_str_eq(call.res[i].body, "passed");
            ck_assert_int_eq(call.res[i].http_version, version == TH_HTTP1 ? 11 : 2);
            th_response_free(&call.res[i]);
        }
        free(url);
        free(path);
    }
    /* statements of one request run in order */
    expect_get("/e/order", 200, "1,2,3,4,5");
    stop();
}
END_TEST

START_TEST(unattached_key_raises_key_error)
{
    start();
    char *body = get("/e/key?sa_nowhere", 200);
    ck_assert_msg(strncmp(body, "KeyError: no database session for key `sa_nowhere`", 50) == 0, "%s", body);
    free(body);
    /* middleware: OFF: not attached without db.use, attached with it */
    body = get("/e/key?sa_off", 200);
    ck_assert_msg(strncmp(body, "KeyError:", 9) == 0, "%s", body);
    free(body);
    expect_get("/use/key?sa_off", 200, "attached");
    expect_get("/e/key?sa_main", 200, "attached");
    /* uncaught: an ordinary exception (500, logged) */
    body = get("/e/key-uncaught", 500);
    ck_assert_str_eq(body, "Internal Server Error");
    free(body);
    ck_assert_msg(th_wait_until(log_has, "(H2O::DB::KeyError)", 10000), "not logged");
    stop();
}
END_TEST

START_TEST(db_errors_and_bad_arguments)
{
    start();
    char *body = get("/e/sqlstate", 200);
    ck_assert_msg(strncmp(body, "H2O::DB::Error 42P01 sql_error ", 31) == 0 && strstr(body, "mrb_no_such_table") != NULL, "%s",
                  body);
    free(body);
    /* uncaught H2O::DB::Error: as h2o_db_send_error (no SQL, no message in the body) */
    expect_get("/e/dberror", 500, "database error (SQLSTATE 22012)\n");
    body = get("/e/typeerror", 200);
    ck_assert_msg(strstr(body, "query parameter $1 is a Hash") != NULL && strstr(body, "query parameter $1 is a Symbol") != NULL &&
                      strstr(body, "query parameter $2 is a Array") != NULL &&
                      strstr(body, "query parameters come in an Array, not String") != NULL && strstr(body, "accepted") == NULL,
                  "%s", body);
    free(body);
    body = get("/e/several", 200);
    ck_assert_msg(strncmp(body, "refused: ", 9) == 0, "%s", body);
    free(body);
    stop();
}
END_TEST

START_TEST(exception_answers_500_and_the_vm_stays_usable)
{
    start();
    const char *paths[] = {"/e/boom", "/e/boom-late", "/e/badresponse"};
    const char *logged[] = {"secret boom detail (RuntimeError)", "secret late detail (NoMethodError)", "(TypeError)"};
    for (int i = 0; i < 3; ++i) {
        for (int version = TH_HTTP1; version <= TH_HTTP2; ++version) {
            th_response_t res;
            request(&res, version, NULL, paths[i], NULL);
            ck_assert_int_eq(res.status, 500);
            ck_assert_msg(strstr(res.body, "secret") == NULL, "the error reached the client: %s", res.body);
            th_response_free(&res);
            /* the next request on the same (only) thread works, with and without a query */
            expect_get("/e/ok", 200, "ok");
            expect_get("/e/one", 200, "2");
        }
        ck_assert_msg(th_wait_until(log_has, (void *)logged[i], 10000), "`%s` not in the log", logged[i]);
    }
    /* logged as h2o's mruby logs it: the request's path, where the exception was raised, then the backtrace */
    char *logged_at = th_fmt("[h2o_mruby] in request:/e/boom:mruby raised: %s/errors.rb:%d: secret boom detail (RuntimeError)\n",
                             server.dir, line_of(ERRORS_RB, "raise \"secret boom detail\""));
    ck_assert_msg(log_contains(logged_at), "no `%s` in the log", logged_at);
    free(logged_at);
    ck_assert(log_contains("\n    from (h2o-db)/rack.rb:"));
    stop();
}
END_TEST

START_TEST(config_errors_name_the_ruby_line)
{
    char *rbdir = th_tmpdir(), *out;
    free(th_write_file(rbdir, "bad.rb", "proc do |env|\n  x = 1\n  y = = 2\nend\n", 0));
    free(th_write_file(rbdir, "raises.rb", "def setup\n  raise 'no config here'\nend\nsetup\n", 0));
    free(th_write_file(rbdir, "good.rb", "proc { |env| [200, {}, []] }\n", 0));
    char *conf;
    ck_assert(asprintf(&conf,
                       "listen: 8080\n"
                       "hosts:\n"
                       "  default:\n"
                       "    paths:\n"
                       "      /good:\n"
                       "        mruby.handler-file: %s/good.rb\n"
                       "      /x:\n"
                       "        mruby.handler: |\n"
                       "          proc do |env|\n"
                       "            x = = 1\n"
                       "          end\n",
                       rbdir) > 0);
    ck_assert_int_eq(th_run_h2o_db("-t", conf, &out), 1);
    /* the directive's place, then the Ruby line: line 10 of the config file */
    ck_assert_msg(strstr(out, "h2o-db.conf:8:24: in command mruby.handler, Ruby syntax error at ") != NULL, "%s", out);
    ck_assert_msg(strstr(out, "h2o-db.conf:10:") != NULL, "%s", out);
    free(out);
    free(conf);

    struct {
        const char *handler, *expect;
    } bad[] = {
        {"mruby.handler-file: @X@/bad.rb", "bad.rb:3:"},
        {"mruby.handler-file: @X@/raises.rb", "raised no config here (RuntimeError)"},
        {"mruby.handler-file: @X@/missing.rb", "cannot read"},
        {"mruby.handler: 42", "must end with a Rack app (a proc, or an object with call(env)), not Integer"},
        {"mruby.handler: \"proc { |env| \"", "h2o-db.conf:6:24: in command mruby.handler, Ruby syntax error at"},
        {"mruby.handler: [a, b]", "argument cannot be a sequence"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); ++i) {
        char *handler = strdup(bad[i].handler), *at = strstr(handler, "@X@");
        if (at != NULL) {
            *at = '\0';
            char *h2;
            ck_assert(asprintf(&h2, "%s%s%s", handler, rbdir, at + 3) > 0);
            free(handler);
            handler = h2;
        }
        ck_assert(asprintf(&conf, "listen: 8080\nhosts:\n  default:\n    paths:\n      /x:\n        %s\n", handler) > 0);
        int status = th_run_h2o_db("-t", conf, &out);
        ck_assert_msg(status == 1, "%s: exit %d: %s", handler, status, out);
        ck_assert_msg(strstr(out, bad[i].expect) != NULL, "%s: expected `%s` in: %s", handler, bad[i].expect, out);
        free(out);
        free(conf);
        free(handler);
    }
    /* and a good one passes */
    ck_assert(asprintf(&conf, "listen: 8080\nhosts:\n  default:\n    paths:\n      /x:\n        mruby.handler-file: %s/good.rb\n",
                       rbdir) > 0);
    ck_assert_int_eq(th_run_h2o_db("-t", conf, &out), 0);
    free(out);
    free(conf);
    free(rbdir);
}
END_TEST

START_TEST(rack_env_input_and_response)
{
    start();
    for (int version = TH_HTTP1; version <= TH_HTTP2; ++version) {
        th_response_t res;
        /* POST with a body and a repeated custom header */
        request(&res, version, "POST", "/rack/sub/path?input", "line one\nline two\n");
        ck_assert_int_eq(res.status, 200);
        char expect[2048];
        snprintf(expect, sizeof(expect),
                 "REQUEST_METHOD=POST\nSCRIPT_NAME=/rack\nPATH_INFO=/sub/path\nQUERY_STRING=input\nSERVER_NAME=default\n"
                 "SERVER_ADDR=127.0.0.1\nSERVER_PORT=%d\nSERVER_PROTOCOL=%s\nSERVER_SOFTWARE=h2o/2.2.5\nREMOTE_ADDR=127.0.0.1\n"
                 "CONTENT_TYPE=application/x-www-form-urlencoded\n"
                 "CONTENT_LENGTH=18\nHTTP_HOST=127.0.0.1:%d\nrack.url_scheme=http\n"
                 "first=\"line one\\n\" rest=\"line two\\n\" lines=2 version=[1, 3]\n",
                 server.port, version == TH_HTTP1 ? "HTTP/1.1" : "HTTP/2", server.port);
        ck_assert_str_eq(res.body, expect);
        th_response_free(&res);
    }
    ck_assert_msg(th_wait_until(log_has, "rack.errors line\n", 10000), "rack.errors did not reach the log");

    /* an Array body: content-length computed (a longer one given is the body's), not chunked */
    th_response_t res;
    request(&res, TH_HTTP1, NULL, "/rack?short", NULL);
    ck_assert_str_eq(res.body, "abcd");
    char *len = th_header(&res, "content-length");
    ck_assert_ptr_nonnull(len);
    ck_assert_str_eq(len, "4");
    free(len);
    ck_assert_msg(th_header(&res, "transfer-encoding") == NULL, "%s", res.headers);
    th_response_free(&res);
    /* status, headers (multi-line and Array values), a streamed body (each + close): no length */
    request(&res, TH_HTTP1, NULL, "/rack?headers", NULL);
    ck_assert_int_eq(res.status, 201);
    ck_assert_str_eq(res.body, "abcd");
    ck_assert_msg(th_header(&res, "content-length") == NULL, "%s", res.headers);
    ck_assert_msg(strstr(res.headers, "x-multi: a\r\n") != NULL && strstr(res.headers, "x-multi: b\r\n") != NULL &&
                      strstr(res.headers, "x-arr: c\r\n") != NULL && strstr(res.headers, "x-arr: d\r\n") != NULL,
                  "%s", res.headers);
    th_response_free(&res);
    ck_assert_msg(th_wait_until(log_has, "body closed\n", 10000), "body.close was not called");

    /* inline source: __LINE__ is the config file's line */
    char expect_inline[32];
    snprintf(expect_inline, sizeof(expect_inline), "inline %d",
             line_of(CONF, "proc { |env| [200, {\"content-type\" => \"text/plain\"}, [\"inline"));
    expect_get("/inline", 200, expect_inline);
    stop();
}
END_TEST

START_TEST(status_399_falls_through_to_the_next_handler)
{
    start();
    /* mruby.handler-file twice on one path: YAML order */
    expect_get("/rack", 200, "first handler");
    expect_get("/rack?fall", 200, "second handler fall");
    /* after a suspension (deferred delegation), and to file.dir; the 399's headers stay */
    expect_get("/rack?fall-late", 200, "second handler fall-late");
    th_response_t late;
    request(&late, TH_HTTP1, NULL, "/static/index.html?fall-late", NULL);
    char *kept = th_header(&late, "x-late");
    ck_assert_msg(kept != NULL && strcmp(kept, "kept") == 0, "%s", late.headers);
    free(kept);
    th_response_free(&late);
    expect_get("/static/index.html?fall", 200, "static after fallthrough\n");
    expect_get("/static/index.html?fall-late", 200, "static after fallthrough\n");
    th_response_t res;
    request(&res, TH_HTTP2, NULL, "/static/index.html?fall-late", NULL);
    ck_assert_int_eq(res.status, 200);
    ck_assert_str_eq(res.body, "static after fallthrough\n");
    th_response_free(&res);
    expect_get("/fibers", 200, "1 1");
    stop();
}
END_TEST

START_TEST(json_encoder_escapes_strings)
{
    start();
    expect_get("/json", 200,
               "{\"s\":\"q\\\"b\\\\n\\n\\t\\u0001\\u001f/\",\"sym\":\"val\",\"u\":\"h\xc3\xa9llo \xe2\x9c\x93 \xf0\x9f\x98\x80\","
               "\"bad\":\"a\xef\xbf\xbd"
               "b\",\"ls\":\"\\u2028\",\"a\":[1,-2,1.5,1e+20,0.1,null,true,false],\"nan\":\"NaN\",\"inf\":\"-Infinity\","
               "\"h\":{\"1\":\"x\"},\"big\":4611686018427387903}\n"
               "[1,\"x\"]\n"
               "to_json: nesting deeper than 100 (a cycle?)");
    stop();
}
END_TEST

START_TEST(blocking_classes_are_removed)
{
    start();
    char *path, *q;
    ck_assert(asprintf(&path, "%s/written-by-ruby", dir) > 0);
    ck_assert(asprintf(&q, "/safety?%s", path) > 0);
    expect_get(q, 200, "- - - - refused - read");
    ck_assert_int_ne(access(path, F_OK), 0);
    free(path);
    free(q);
    stop();
}
END_TEST

START_TEST(view_mixin_and_db_for)
{
    start();
    /* the suite's databases (@PG@ and @PGDB2@), by name */
    char *db1 = th_pg("SELECT current_database()"), *db2 = th_pg_on(th_pg_url2(), "SELECT current_database()");
    char *view = th_fmt("%s 2 %s", db1, db2), *for_ = th_fmt("%s %s true false", db2, db1);
    expect_get("/view", 200, view);
    /* binds: {mrb_audit: sa_off}: that table's session is on the other database */
    expect_get("/for", 200, for_);
    free(db1);
    free(db2);
    free(view);
    free(for_);
    stop();
}
END_TEST

/* An HTTP/1 client that sends GET PATH, whose query waits at the gate KEY, and leaves once that
 * query waits there (one more waiter than before it). */
static void send_and_leave(int port, const char *path, long key)
{
    long before = db_gate_waiting(key);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    ck_assert(connect(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0);
    char req[256];
    int n = snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", path);
    ck_assert(send(fd, req, n, 0) == n);
    ck_assert_msg(db_gate_wait_for(key, before + 1), "HTTP/1: the query of %s never waited at the gate", path);
    close(fd);
}

static size_t discard(char *ptr, size_t size, size_t nmemb, void *data)
{
    return size * nmemb;
}

/* The same over HTTP/2 (prior knowledge): the client closes its connection with the stream open. */
static void abandon_http2(int port, const char *path, long key)
{
    long before = db_gate_waiting(key), waiting = before;
    char url[256];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", port, path);
    CURLM *m = curl_multi_init();
    CURL *c = curl_easy_init();
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_HTTP_VERSION, CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, discard);
    curl_multi_add_handle(m, c);
    int running = 1;
    double deadline = th_now_ms() + 10000 * th_time_factor();
    while (running && (waiting = db_gate_waiting(key)) <= before && th_now_ms() < deadline) {
        curl_multi_perform(m, &running);
        curl_multi_poll(m, NULL, 0, 20, NULL);
    }
    curl_multi_remove_handle(m, c);
    curl_easy_cleanup(c);
    curl_multi_cleanup(m); /* closes the connection */
    ck_assert_msg(waiting > before, "HTTP/2: the query of %s never waited at the gate (running %d)", path, running);
}

static int no_fibers_left(void *arg)
{
    th_response_t res;
    char *url = th_url(&server, "/fibers");
    int ok = th_http(&res, TH_HTTP1, NULL, url, NULL) == 0 && res.status == 200 && strcmp(res.body, "1 1") == 0;
    if (!ok)
        snprintf(arg, 64, "%s", res.body);
    th_response_free(&res);
    free(url);
    return ok;
}

START_TEST(no_live_fibers_after_1000_requests)
{
    start();
    expect_get("/fibers", 200, "1 1"); /* the caller's own */
    const char *paths[] = {"/e/ok", "/e/one", "/e/boom", "/rack?fall-late", "/e/sqlstate", "/txn?nested", "/e/key?sa_x", "/for"};
    char *urls[20];
    for (int i = 0; i < 20; ++i)
        urls[i] = th_url(&server, paths[i % 8]);
    int answered = 0;
    for (int batch = 0; batch < 50; ++batch) {
        th_response_t res[20];
        th_http_parallel(res, 20, batch % 2 == 0 ? TH_HTTP1 : TH_HTTP2, (const char *const *)urls);
        for (int i = 0; i < 20; ++i) {
            ck_assert_msg(res[i].curl_error == 0, "curl %d", res[i].curl_error);
            ck_assert_msg(res[i].status == (i % 8 == 2 ? 500 : 200), "%s: %ld", paths[i % 8], res[i].status);
            answered += res[i].status != 0;
            th_response_free(&res[i]);
        }
    }
    ck_assert_int_eq(answered, 1000);
    for (int i = 0; i < 20; ++i)
        free(urls[i]);
    char got[64] = "";
    ck_assert_msg(no_fibers_left(got), "after 1000 requests: live fibers, fiber objects = %s", got);

    /* requests that end while their Fiber waits (its query held at a closed gate): HTTP/2 and
     * HTTP/1 clients that leave */
    long key = db_gate_key();
    char *gated = th_fmt("/e/gate?%ld", key);
    PGconn *gate = db_gate_close(key);
    for (int i = 0; i < 3; ++i) {
        abandon_http2(server.port, gated, key);
        send_and_leave(server.port, gated, key);
    }
    /* the Fibers are gone while their queries still wait */
    ck_assert_msg(th_wait_until(no_fibers_left, got, 10000), "after abandoned requests: %s", got);
    db_gate_open(gate);
    free(gated);
    /* and the thread still serves */
    expect_get("/e/one", 200, "2");
    stop();
}
END_TEST

/* ---- as H2O's mruby does it ---- */

static void start_compat(void)
{
    dir = th_tmpdir();
    free(th_write_file(dir, "compat.rb", COMPAT_RB, 0));
    char *www = th_fmt("%s/www", dir);
    mkdir(www, 0755);
    free(th_write_file(www, "index.txt", "hello\n", 0));
    free(th_write_file(www, "pushed.js", "pushed\n", 0));
    free(www);
    int ret = th_server_start_in(&server, dir, COMPAT_CONF);
    ck_assert_msg(ret == 0, "server did not start: %s", th_server_log(&server));
}

/* One HTTP/1.1 request written as is (no client normalizes the path), with Connection: close;
 * the whole response, malloc'd. */
static char *raw_http1(const char *method, const char *path)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(server.port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    ck_assert(connect(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0);
    struct timeval tv = {(time_t)(10 * th_time_factor()), 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    char *req = th_fmt("%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", method, path);
    ck_assert(send(fd, req, strlen(req), 0) == (ssize_t)strlen(req));
    free(req);
    size_t len = 0, cap = 4096;
    char *buf = malloc(cap);
    ssize_t n;
    while ((n = recv(fd, buf + len, cap - len - 1, 0)) > 0)
        if ((len += n) + 1 == cap)
            buf = realloc(buf, cap *= 2);
    buf[len] = '\0';
    close(fd);
    return buf;
}

static const char *body_of(const char *response)
{
    const char *p = strstr(response, "\r\n\r\n");
    return p != NULL ? p + 4 : "";
}

static void expect_raw_body(const char *path, const char *body)
{
    char *res = raw_http1("GET", path);
    ck_assert_msg(strcmp(body_of(res), body) == 0, "GET %s: expected `%s`, got: %s", path, body, res);
    free(res);
}

START_TEST(rack_env_server_keys_and_setenv_as_h2o)
{
    start_compat();
    for (int version = TH_HTTP1; version <= TH_HTTP2; ++version) {
        /* SERVER_NAME is the config's host, SERVER_ADDR/PORT the socket's, SERVER_SOFTWARE the
         * server-name; setenv of every level with unsetenv */
        char *expect = th_fmt("SERVER_NAME=\"compat.example\" SERVER_ADDR=\"127.0.0.1\" SERVER_PORT=\"%d\" "
                              "SERVER_SOFTWARE=\"h2o-db-compat/1.0\" HTTP_HOST=\"127.0.0.1:%d\" GLOBAL_VAR=\"g\" HOST_VAR=nil "
                              "PATH_VAR=\"p\" FROM_FIRST=nil",
                              server.port, server.port);
        th_response_t res;
        request(&res, version, NULL, "/abc/x?env", NULL);
        ck_assert_int_eq(res.status, 200);
        ck_assert_str_eq(res.body, expect);
        th_response_free(&res);
        free(expect);
    }
    /* a Host without the port: SERVER_PORT is still the listening socket's */
    char *expect = th_fmt("SERVER_NAME=\"compat.example\" SERVER_ADDR=\"127.0.0.1\" SERVER_PORT=\"%d\" "
                          "SERVER_SOFTWARE=\"h2o-db-compat/1.0\" HTTP_HOST=\"127.0.0.1\" GLOBAL_VAR=\"g\" HOST_VAR=\"h\" "
                          "PATH_VAR=nil FROM_FIRST=nil",
                          server.port);
    expect_raw_body("/?env", expect);
    free(expect);
    stop();
}
END_TEST

START_TEST(path_info_is_the_path_as_sent)
{
    start_compat();
    /* t/50mruby.t's cases: PATH_INFO neither percent-decoded nor with its dot segments resolved,
     * SCRIPT_NAME the configured path (which matched the normalized one) */
    const char *cases[][2] = {
        {"/abc/def%20ghi?paths", "/abc|/def%20ghi"},
        {"/abc/def/../ghi/../jhk?paths", "/abc|/def/../ghi/../jhk"},
        {"/123/../abc/def/../ghi?paths", "/abc|/def/../ghi"},
        {"/foo%20bar/baz?paths", "/foo bar|/baz"},
        {"/xxx/../hoge?paths", "|/xxx/../hoge"},
        {"/../abc?paths", "/abc|"},
        {"abc/def?paths", "/abc|/def"},
        {"123/../abc/def/../ghi?paths", "/abc|/def/../ghi"},
        {"xyz?paths", "|xyz"},
        {"?paths", "|"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); ++i)
        expect_raw_body(cases[i][0], cases[i][1]);
    for (int version = TH_HTTP1; version <= TH_HTTP2; ++version) {
        th_response_t res;
        request(&res, version, NULL, "/abc/def%20ghi?paths", NULL);
        ck_assert_str_eq(res.body, "/abc|/def%20ghi");
        th_response_free(&res);
    }
    stop();
}
END_TEST

/* Reads exactly n bytes; 0, or -1 on EOF or timeout. */
static int read_full(int fd, unsigned char *buf, size_t n)
{
    for (size_t got = 0; got < n;) {
        ssize_t r = recv(fd, buf + got, n - got, 0);
        if (r <= 0)
            return -1;
        got += r;
    }
    return 0;
}

/* GET path over HTTP/2 (prior knowledge), spoken frame by frame: Debian 12's libcurl 7.88.1
 * receives PUSH_PROMISE frames but never calls its push callback. Our SETTINGS are empty, so
 * push is enabled. Returns the number of PUSH_PROMISE frames on the request's stream; the body
 * (of stream 1) goes to `body` (256 bytes). */
static int http2_get_counting_pushes(const char *path, char *body)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0), promises = 0, done = 0;
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(server.port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    ck_assert(connect(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0);
    struct timeval tv = {(time_t)(10 * th_time_factor()), 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    char authority[32];
    int alen = snprintf(authority, sizeof(authority), "127.0.0.1:%d", server.port), plen = (int)strlen(path);
    ck_assert(plen < 127);
    /* preface, empty SETTINGS, HEADERS (END_STREAM | END_HEADERS): GET, http, :path and :authority as literals */
    unsigned char out[512], *o = out;
    memcpy(o, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\4\0\0\0\0\0", 33);
    o += 33;
    size_t block = 2 + 2 + plen + 2 + alen;
    unsigned char head[] = {0, 0, (unsigned char)block, 1, 5, 0, 0, 0, 1, 0x82, 0x86, 0x44, (unsigned char)plen};
    memcpy(o, head, sizeof(head));
    o += sizeof(head);
    memcpy(o, path, plen);
    o += plen;
    *o++ = 0x41;
    *o++ = (unsigned char)alen;
    memcpy(o, authority, alen);
    o += alen;
    ck_assert(send(fd, out, o - out, 0) == o - out);
    body[0] = '\0';
    while (!done) {
        unsigned char fh[9], payload[16384];
        ck_assert_msg(read_full(fd, fh, 9) == 0, "HTTP/2: the connection ended before the response did");
        size_t len = (size_t)fh[0] << 16 | fh[1] << 8 | fh[2];
        uint32_t stream = ((uint32_t)fh[5] << 24 | fh[6] << 16 | fh[7] << 8 | fh[8]) & 0x7fffffff;
        ck_assert(len <= sizeof(payload) && read_full(fd, payload, len) == 0);
        if (fh[3] == 4 && (fh[4] & 1) == 0) /* SETTINGS: ACK it */
            ck_assert(send(fd, "\0\0\0\4\1\0\0\0\0", 9, 0) == 9);
        ck_assert_msg(fh[3] != 7, "HTTP/2: GOAWAY");
        promises += fh[3] == 5 && stream == 1;
        if (fh[3] == 0 && stream == 1)
            snprintf(body + strlen(body), 256 - strlen(body), "%.*s", (int)len, payload);
        done = stream == 1 && (fh[3] == 0 || fh[3] == 1) && (fh[4] & 1) != 0; /* END_STREAM */
    }
    close(fd);
    return promises;
}

START_TEST(status_399_keeps_its_headers_and_pushes)
{
    start_compat();
    /* the next handler (file.dir) answers with the 399's headers */
    th_response_t res;
    request(&res, TH_HTTP1, NULL, "/push/index.txt?push", NULL);
    ck_assert_int_eq(res.status, 200);
    ck_assert_str_eq(res.body, "hello\n");
    ck_assert_msg(strstr(res.headers, "\nx-kept: yes\r\n") != NULL &&
                      strstr(res.headers, "\nlink: </push/pushed.js>; rel=preload\r\n"),
                  "%s", res.headers);
    th_response_free(&res);
    /* over HTTP/2 a link rel=preload pushes (its PUSH_PROMISE before the response), nopush does not */
    char body[256];
    ck_assert_int_eq(http2_get_counting_pushes("/push/index.txt?push", body), 1);
    ck_assert_str_eq(body, "hello\n");
    ck_assert_int_eq(http2_get_counting_pushes("/push/index.txt?nopush", body), 0);
    ck_assert_str_eq(body, "hello\n");
    /* x-fallthru-set-NAME: an env variable for the next handler, not a response header */
    for (int version = TH_HTTP1; version <= TH_HTTP2; ++version) {
        request(&res, version, NULL, "/fall/?env", NULL);
        ck_assert_int_eq(res.status, 200);
        ck_assert_msg(strstr(res.body, " FROM_FIRST=\"1\"") != NULL, "%s", res.body);
        ck_assert_msg(strstr(res.headers, "x-kept: yes\r\n") != NULL && strstr(res.headers, "fallthru") == NULL, "%s", res.headers);
        th_response_free(&res);
    }
    stop();
}
END_TEST

START_TEST(rack_input_as_h2o)
{
    start_compat();
    for (int version = TH_HTTP1; version <= TH_HTTP2; ++version) {
        th_response_t res;
        /* read(n) nil at the end, read() "", each from the start, rewind self, read(n, buf) appends, byteindex */
        request(&res, version, "POST", "/?input", "ab\ncd");
        ck_assert_int_eq(res.status, 200);
        ck_assert_str_eq(res.body, "[\"a\", [\"ab\\n\", \"cd\"], nil, \"\", true, \"xab\", 0, \"\\n\", \"cd\", nil, nil, [3, 2]]");
        th_response_free(&res);
        /* a rack.input kept past its request is closed */
        request(&res, version, "POST", "/?keep-input", "kept body");
        ck_assert_str_eq(res.body, "kept body");
        th_response_free(&res);
        request(&res, version, NULL, "/?old-input", NULL);
        ck_assert_str_eq(res.body, "read: IOError stream closed, gets: IOError stream closed, rewind: IOError stream closed, "
                                   "each: IOError stream closed");
        th_response_free(&res);
    }
    stop();
}
END_TEST

START_TEST(response_framing_as_h2o)
{
    start_compat();
    /* 204: no content-length, the reason libh2o's "OK" (as h2o's mruby sends it) */
    char *res = raw_http1("GET", "/?204");
    ck_assert_msg(strncmp(res, "HTTP/1.1 204 OK\r\n", 17) == 0 && strstr(res, "Content-Length") == NULL &&
                      strstr(res, "content-length") == NULL && strstr(res, "\r\nx-a: 1\r\n") != NULL && *body_of(res) == '\0',
                  "%s", res);
    free(res);
    /* the app's content-length cuts the body; hop-by-hop headers are dropped */
    for (int version = TH_HTTP1; version <= TH_HTTP2; ++version) {
        th_response_t r;
        request(&r, version, NULL, "/?length", NULL);
        ck_assert_str_eq(r.body, "ab");
        char *connection = th_header(&r, "connection"), *len = th_header(&r, "content-length");
        ck_assert_msg(len != NULL && strcmp(len, "2") == 0 && th_header(&r, "transfer-encoding") == NULL &&
                          (connection == NULL || strcmp(connection, "close") != 0),
                      "%s", r.headers);
        free(connection);
        free(len);
        th_response_free(&r);
    }
    /* HEAD: the length, no body */
    res = raw_http1("HEAD", "/");
    ck_assert_msg(strncmp(res, "HTTP/1.1 200 OK\r\n", 17) == 0 && strstr(res, "Content-Length: 4\r\n") != NULL &&
                      *body_of(res) == '\0',
                  "%s", res);
    free(res);
    stop();
}
END_TEST

START_TEST(exceptions_are_logged_as_h2o_logs_them)
{
    start_compat();
    expect_get("/?raise", 500, "Internal Server Error");
    char *line = th_fmt("[h2o_mruby] in request:/?raise:mruby raised: %s/compat.rb:%d: compat failure (RuntimeError)\n", server.dir,
                        line_of(COMPAT_RB, "raise \"compat failure\""));
    ck_assert_msg(th_wait_until(log_has, line, 10000), "no `%s` in: %s", line, th_server_log(&server));
    free(line);
    /* a flow-style inline handler: the directive's line */
    expect_get("/inline-raise", 500, "Internal Server Error");
    line = th_fmt("[h2o_mruby] in request:/inline-raise:mruby raised: %s:%d: inline failure (RuntimeError)\n", server.conf_path,
                  line_of(COMPAT_CONF, "raise \"inline failure\""));
    ck_assert_msg(th_wait_until(log_has, line, 10000), "no `%s` in: %s", line, th_server_log(&server));
    free(line);
    stop();
}
END_TEST

START_TEST(handler_file_found_in_the_working_directory)
{
    /* not beside the config file: opened from the working directory, as h2o opens it */
    char *cwd_dir = th_tmpdir(), old[PATH_MAX];
    free(th_write_file(cwd_dir, "from-cwd.rb", "proc { |env| [200, {}, [\"from the working directory\"]] }\n", 0));
    dir = th_tmpdir();
    ck_assert(getcwd(old, sizeof(old)) != NULL);
    ck_assert(chdir(cwd_dir) == 0);
    int ret = th_server_start_in(&server, dir,
                                 "listen: {host: 127.0.0.1, port: @PORT@}\n"
                                 "hosts:\n"
                                 "  default:\n"
                                 "    paths:\n"
                                 "      /:\n"
                                 "        mruby.handler-file: from-cwd.rb\n");
    ck_assert(chdir(old) == 0);
    ck_assert_msg(ret == 0, "server did not start: %s", th_server_log(&server));
    expect_get("/", 200, "from the working directory");
    stop();
    free(cwd_dir);
}
END_TEST

/* ---- the demo ---- */

START_TEST(demo_notes_rb)
{
    /* demo/notes.rb from the source tree (this file is ../t/test_mruby.c from the build folder) */
    char src[PATH_MAX], *demo, *conf, *body;
    ck_assert(snprintf(src, sizeof(src), "%s/%s", __FILE__[0] == '/' ? "" : th_build_dir(), __FILE__) < (int)sizeof(src));
    ck_assert(asprintf(&demo, "%s/../demo", dirname(src)) > 0);
    ck_assert(asprintf(&conf,
                       "listen: {host: 127.0.0.1, port: @PORT@}\n"
                       "num-threads: 2\n"
                       "db.bind:\n"
                       "  url: sqlite:///notes.sqlite3\n"
                       "  schema: %s/schema.sql\n"
                       "hosts:\n"
                       "  default:\n"
                       "    paths:\n"
                       "      /rb/notes:\n"
                       "        mruby.handler-file: %s/notes.rb\n",
                       demo, demo) > 0);
    dir = th_tmpdir();
    ck_assert_msg(th_server_start_in(&server, dir, conf) == 0, "%s", th_server_log(&server));
    free(conf);

    th_response_t res;
    request(&res, TH_HTTP1, "POST", "/rb/notes", "Buy milk\nand \"bread\"\n");
    ck_assert_int_eq(res.status, 201);
    ck_assert_str_eq(res.body, "{\"id\":1}\n");
    th_response_free(&res);
    request(&res, TH_HTTP2, "POST", "/rb/notes", "second");
    ck_assert_int_eq(res.status, 201);
    ck_assert_str_eq(res.body, "{\"id\":2}\n");
    th_response_free(&res);
    body = get("/rb/notes/export.csv", 200); /* a streamed body over db.each */
    ck_assert_msg(strncmp(body, "id,title,created_at\r\n1,Buy milk,", 32) == 0 && strstr(body, "\r\n2,second,") != NULL, "%s",
                  body);
    free(body);

    body = get("/rb/notes", 200);
    const char *first = "[{\"id\":1,\"title\":\"Buy milk\",\"body\":\"Buy milk\\nand \\\"bread\\\"\\n\",\"created_at\":\"";
    ck_assert_msg(strncmp(body, first, strlen(first)) == 0 &&
                      strstr(body, "{\"id\":2,\"title\":\"second\",\"body\":\"second\",\"created_at\":\"") != NULL,
                  "%s", body);
    free(body);
    body = get("/rb/notes/2", 200);
    ck_assert_msg(strncmp(body, "{\"id\":2,\"title\":\"second\",", 25) == 0, "%s", body);
    free(body);

    request(&res, TH_HTTP1, "DELETE", "/rb/notes/2", NULL);
    ck_assert_int_eq(res.status, 204);
    th_response_free(&res);
    expect_get("/rb/notes/2", 404, "{\"error\":\"no such note\"}\n");
    request(&res, TH_HTTP1, "DELETE", "/rb/notes/2", NULL);
    ck_assert_int_eq(res.status, 404);
    th_response_free(&res);
    request(&res, TH_HTTP1, "POST", "/rb/notes", "");
    ck_assert_int_eq(res.status, 400);
    th_response_free(&res);
    request(&res, TH_HTTP1, "PUT", "/rb/notes", "x");
    ck_assert_int_eq(res.status, 405);
    th_response_free(&res);
    free(get("/rb/notes/abc", 404)); /* not ours: falls through (nothing else there) */
    stop();
    /* the writes and their counters (one transaction each), in the database file */
    char *path;
    sqlite3 *db;
    sqlite3_stmt *stmt;
    ck_assert(asprintf(&path, "%s/notes.sqlite3", dir) > 0);
    ck_assert_int_eq(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    ck_assert_int_eq(
        sqlite3_prepare_v2(db, "SELECT notes_created, notes_deleted, (SELECT count(*) FROM notes) FROM stats", -1, &stmt, NULL),
        SQLITE_OK);
    ck_assert_int_eq(sqlite3_step(stmt), SQLITE_ROW);
    ck_assert_int_eq(sqlite3_column_int(stmt, 0), 2);
    ck_assert_int_eq(sqlite3_column_int(stmt, 1), 1);
    ck_assert_int_eq(sqlite3_column_int(stmt, 2), 1);
    sqlite3_finalize(stmt);
    sqlite3_close(db);
    free(path);
    free(demo);
}
END_TEST

int main(void)
{
    curl_global_init(CURL_GLOBAL_ALL);
    Suite *s = suite_create("mruby");
    TCase *tc = tcase_create("mruby");
    tcase_set_timeout(tc, 120);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, query_with_params_returns_typed_rows);
    tcase_add_test(tc, transaction_commits_or_rolls_back_in_the_database);
    tcase_add_test(tc, queries_suspend_the_fiber_not_the_thread);
    tcase_add_test(tc, unattached_key_raises_key_error);
    tcase_add_test(tc, db_errors_and_bad_arguments);
    tcase_add_test(tc, exception_answers_500_and_the_vm_stays_usable);
    tcase_add_test(tc, config_errors_name_the_ruby_line);
    tcase_add_test(tc, rack_env_input_and_response);
    tcase_add_test(tc, status_399_falls_through_to_the_next_handler);
    tcase_add_test(tc, json_encoder_escapes_strings);
    tcase_add_test(tc, blocking_classes_are_removed);
    tcase_add_test(tc, view_mixin_and_db_for);
    tcase_add_test(tc, no_live_fibers_after_1000_requests);
    tcase_add_test(tc, rack_env_server_keys_and_setenv_as_h2o);
    tcase_add_test(tc, path_info_is_the_path_as_sent);
    tcase_add_test(tc, status_399_keeps_its_headers_and_pushes);
    tcase_add_test(tc, rack_input_as_h2o);
    tcase_add_test(tc, response_framing_as_h2o);
    tcase_add_test(tc, exceptions_are_logged_as_h2o_logs_them);
    tcase_add_test(tc, handler_file_found_in_the_working_directory);
    tcase_add_test(tc, demo_notes_rb);
    suite_add_tcase(s, tc);
    int status = th_run_suite(s);
    curl_global_cleanup();
    return status;
}
