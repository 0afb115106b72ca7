# H2O::DB — pooled database sessions for mruby handlers (docs/mruby.md).
#
# The C side (module/mruby/db.c) defines H2O::DB.session, Session#for, Session#__prepare,
# H2O::DB.live_fibers and H2O::DB.to_json. A statement is a Fiber.yield of what
# Session#__prepare returns: the C code that resumed the request's Fiber receives it, sends
# the statement and resumes the Fiber with the answer when the database replies; the
# thread serves other requests meanwhile.
module H2O
  module DB
    DEFAULT_KEY = "sa_main"

    # A failed statement: #message, #sqlstate ("23505", ...) and #status, one of
    # :sql_error, :busy, :unavailable, :timeout, :client_gone. Uncaught, it answers the
    # request as h2o_db_send_error does (503, 504 or 500).
    class Error < StandardError
      attr_reader :sqlstate, :status

      def initialize(message = "database error", sqlstate = "XX000", status = :sql_error)
        super(message)
        @sqlstate = sqlstate
        @status = status
      end
    end

    # The key is not attached at the path being served (db.bind / db.use).
    class KeyError < ::KeyError
    end

    class Session
      # rows as an Array of Hashes, typed: Integer, Float, true/false, nil, String
      def query(sql, params = [])
        __suspend(__prepare(0, sql, params))
      end

      # the number of rows the statement affected
      def execute(sql, params = [])
        __suspend(__prepare(1, sql, params))
      end

      # Yields the rows of one statement (Hashes, typed as query's) as they arrive, a batch at
      # a time (the Fiber waits between batches); returns how many it yielded. Leaving the
      # block early (break, an exception) stops the statement, then goes on.
      def each(sql, params = [])
        raise ArgumentError, "db.each needs a block: it yields the rows as they arrive" unless block_given?
        count = 0
        batch = __suspend(__prepare(5, sql, params))
        over = false
        begin
          while batch
            batch.each do |row|
              yield row
              count += 1
            end
            batch = __suspend(__prepare(6))
          end
          over = true
        ensure
          __suspend(__prepare(7)) unless over
        end
        count
      end

      def begin
        __suspend(__prepare(2))
      end

      def commit
        __suspend(__prepare(3))
      end

      def rollback
        __suspend(__prepare(4))
      end

      # Runs the block inside BEGIN ... COMMIT. An exception rolls back and is re-raised;
      # leaving the block otherwise (its end, break, next, return) commits.
      def transaction
        self.begin
        failed = false
        begin
          yield self
        rescue Exception => e
          failed = true
          begin
            rollback
          rescue H2O::DB::Error
            # the block's exception is the one to report
          end
          raise e
        ensure
          commit unless failed
        end
      end

      def inspect
        "#<H2O::DB::Session>"
      end

      def __suspend(op)
        begin
          answer = Fiber.yield(op)
        rescue FiberError => e
          raise FiberError, "#{e.message}: an H2O::DB statement must run in the request's own Fiber, " \
                            "not in a block called from C (a Hash default proc, sort_by, ...) nor in a Fiber of your own"
        end
        raise answer if answer.is_a?(Exception)
        answer
      end
    end

    # The seed's SABaseView for class-style apps: sa_session(env, key = "sa_main").
    # With a String or Symbol first, that is the key and the env is @env.
    module View
      def sa_session(env = @env, key = DEFAULT_KEY)
        if env.is_a?(String) || env.is_a?(Symbol)
          key = env.to_s
          env = @env
        end
        H2O::DB.session(env, key)
      end
    end
  end
end
