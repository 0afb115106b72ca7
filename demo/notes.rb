# The demo's notes API in Ruby (an mruby.handler-file), on the same SQLite bind (sa_main)
# and tables (demo/schema.sql) as the C version in demo/notes.c:
#
#   GET    /rb/notes          [{"id":1,"title":"...","body":"...","created_at":"..."}, ...]
#   GET    /rb/notes/ID       one note, or 404
#   POST   /rb/notes          the request body is the note; its first line is the title -> 201 {"id":N}
#   DELETE /rb/notes/ID       204, or 404
#   GET    /rb/notes/export.csv   every note as CSV (id,title,created_at), streamed as the rows arrive
#
# Each query suspends this request's Fiber; the thread serves other requests meanwhile.
# Writes run in a transaction that also keeps the stats table up to date. A database
# failure that is not rescued answers as h2o_db_send_error does (503, 504 or 500).

class Notes
  include H2O::DB::View

  MAX_TITLE = 200
  MAX_BODY = 64 * 1024
  JSON_TYPE = { "content-type" => "application/json" }.freeze
  COLUMNS = "id, title, body, created_at"

  def call(env)
    db = sa_session(env) # sa_main
    if env["PATH_INFO"] == "/export.csv" && env["REQUEST_METHOD"] == "GET"
      return [200, { "content-type" => "text/csv" }, Export.new(db)]
    end
    id = note_id(env["PATH_INFO"])
    return [399, {}, []] if id == :no_route # not ours: the next handler of the path answers

    case [env["REQUEST_METHOD"], id.nil?]
    when ["GET", true] then list(db)
    when ["GET", false] then show(db, id)
    when ["POST", true] then create(db, env["rack.input"].read)
    when ["DELETE", false] then destroy(db, id)
    else [405, { "allow" => "GET, POST, DELETE", "content-type" => "text/plain" }, ["method not allowed\n"]]
    end
  end

  private

  # "" or "/" -> nil; "/123" -> 123; anything else -> :no_route
  def note_id(path)
    return nil if path.empty? || path == "/"
    digits = path[1..-1]
    return :no_route unless path.start_with?("/") && !digits.empty? && digits.size <= 18 &&
                            digits.each_char.all? { |c| c >= "0" && c <= "9" }
    digits.to_i
  end

  def json(status, obj)
    [status, JSON_TYPE, [JSON.generate(obj), "\n"]]
  end

  def not_found
    json(404, { "error" => "no such note" })
  end

  def list(db)
    json(200, db.query("SELECT #{COLUMNS} FROM notes ORDER BY id"))
  end

  def show(db, id)
    note = db.query("SELECT #{COLUMNS} FROM notes WHERE id = $1", [id]).first
    note ? json(200, note) : not_found
  end

  def create(db, text)
    if text.empty? || text.bytesize > MAX_BODY || text.include?("\0")
      return [400, { "content-type" => "text/plain" }, ["POST the note as the request body (text, at most 64 KiB)\n"]]
    end
    title = text.split("\n", 2).first.to_s.chomp("\r")[0, MAX_TITLE]
    id = db.transaction do
      row = db.query("INSERT INTO notes (title, body) VALUES ($1, $2) RETURNING id", [title, text]).first
      db.execute("UPDATE stats SET notes_created = notes_created + 1 WHERE id = 1")
      row["id"]
    end
    json(201, { "id" => id })
  end

  # A streamed body (it is not an Array): each line leaves as db.each yields its row, so the
  # export holds a few rows in memory however many notes there are.
  class Export
    def initialize(db)
      @db = db
    end

    def each
      yield "id,title,created_at\r\n"
      @db.each("SELECT id, title, created_at FROM notes ORDER BY id") do |row|
        yield [row["id"].to_s, csv(row["title"]), csv(row["created_at"])].join(",") + "\r\n"
      end
    end

    private

    # RFC 4180: a field with a comma, a quote or a line break is quoted, its quotes doubled
    def csv(s)
      s = s.to_s
      return s unless s.include?(",") || s.include?("\"") || s.include?("\n") || s.include?("\r")
      "\"" + s.split("\"", -1).join("\"\"") + "\""
    end
  end

  def destroy(db, id)
    deleted = db.transaction do
      n = db.execute("DELETE FROM notes WHERE id = $1", [id])
      db.execute("UPDATE stats SET notes_deleted = notes_deleted + 1 WHERE id = 1") if n > 0
      n
    end
    deleted > 0 ? [204, {}, []] : not_found
  end
end

Notes.new
