# TechEmpower's /db in an mruby handler (bench/run serves it at /mruby/db next to the C
# handler's /db, bench/techempower.c:te_db): one random World row as a JSON object.
WORLD_SQL = 'SELECT id, randomnumber AS "randomNumber" FROM world WHERE id = $1'
JSON_HEADERS = { "content-type" => "application/json" }.freeze

proc do |env|
  row = H2O::DB.session(env).query(WORLD_SQL, [rand(10_000) + 1]).first
  [200, JSON_HEADERS, [H2O::DB.to_json(row)]]
end
