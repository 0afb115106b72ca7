-- wrk -s mix.lua http://127.0.0.1:PORT -- MIX : the request mixes of bench/soak, POSTed to the
-- tests' db_script handler, turn by turn on the three binds (sa_main PostgreSQL, sa_lite SQLite,
-- sa_my MariaDB):
--   reads   autocommit primary-key lookups                                 /s    → 200 (503 while PostgreSQL is down)
--   tx      BEGIN; INSERT; SELECT; COMMIT                                  /s    → 200 (503 while down)
--   errors  a duplicate key: autocommit, or inside a transaction           /err  → 500 (SQLSTATE 23505 / 23000);
--           every fourth one with CONTINUE: the failed transaction's next
--           statement (25P02) and its COMMIT are refused, answered as JSON /err  → 200
local keys = {"sa_main", "sa_lite", "sa_my"}
local mix = "reads"
local n = 0

function init(args)
    mix = args[1] or "reads"
    math.randomseed(os.time() * 1000 + (tonumber(tostring({}):match("0x(%x+)"), 16) or 0) % 1000)
    n = math.random(0, 2)
end

function request()
    n = n + 1
    local key = keys[n % 3 + 1]
    local path, body
    if mix == "reads" then
        path = "/s?key=" .. key
        body = "SENDERROR\nSQL SELECT id, v FROM soak_kv WHERE id = $1\nP " .. math.random(1, 1000)
    elseif mix == "tx" then
        path = "/s?key=" .. key
        body = "SENDERROR\nBEGIN\nSQL INSERT INTO soak_log (k, v) VALUES ($1, $2)\nP tx\nP " .. n ..
            "\nSQL SELECT count(*) AS c FROM soak_kv WHERE id <= $1\nP 10\nCOMMIT"
    else
        path = "/err?key=" .. key
        local variant = n % 4
        if variant == 0 then
            body = "SENDERROR\nSQL INSERT INTO soak_dup (id) VALUES (1)"
        elseif variant == 1 then
            body = "SENDERROR\nBEGIN\nSQL INSERT INTO soak_dup (id) VALUES (1)\nCOMMIT"
        elseif variant == 2 then
            body = "SENDERROR\nBEGIN\nSQL INSERT INTO soak_log (k, v) VALUES ('err', 'rolled back')\n" ..
                "SQL INSERT INTO soak_dup (id) VALUES (1)\nCOMMIT"
        else
            body = "CONTINUE\nBEGIN\nSQL INSERT INTO soak_dup (id) VALUES (1)\nSQL SELECT 1\nCOMMIT"
        end
    end
    return wrk.format("POST", path, {["Content-Type"] = "text/plain"}, body)
end
