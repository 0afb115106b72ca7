-- wrk -s post.lua: every request POSTs one statement to the db_script handler (bench/outage)
wrk.method = "POST"
wrk.body = "SENDERROR\nSQL SELECT 1"
wrk.headers["Content-Type"] = "text/plain"
