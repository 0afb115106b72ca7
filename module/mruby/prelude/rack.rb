# The Rack side of h2o-db's mruby handlers: rack.input, rack.errors, and the runner that
# the C side starts in a new Fiber for every request (module/mruby/handler.c).
module H2O
  module DB
    # rack.input: the request body (h2o has read all of it before the handler runs), with
    # the semantics of h2o's InputStream: read(length), gets and byteindex answer nil at the
    # end, each starts from the beginning, read(length, buffer) appends to buffer; once the
    # request is over (the C side sets @s to nil) every call raises IOError. One difference:
    # read() at the end answers "" as Rack says (h2o: nil), which apps that read an empty POST
    # body rely on. @s and @pos are set by the C side.
    class Input
      include Enumerable
      CLOSED = Object.const_defined?(:IOError) ? IOError : RuntimeError

      def initialize(string = "")
        @s = string
        @pos = 0
      end

      def read(length = nil, buffer = nil)
        s = __open
        if length.nil?
          out = @pos < s.bytesize ? s.byteslice(@pos, s.bytesize - @pos) : ""
        else
          length = Integer(length)
          raise ArgumentError, "negative length #{length} given" if length < 0
          return nil if @pos >= s.bytesize
          out = s.byteslice(@pos, length)
        end
        @pos += out.bytesize
        buffer ? buffer << out : out
      end

      def gets
        s = __open
        return nil if @pos >= s.bytesize
        nl = s.index("\n", @pos)
        stop = nl ? nl + 1 : s.bytesize
        line = s.byteslice(@pos, stop - @pos)
        @pos = stop
        line
      end

      def each
        return to_enum(:each) unless block_given?
        rewind
        while (line = gets)
          yield line
        end
        nil
      end

      def rewind
        __open
        @pos = 0
        self
      end

      # the distance from the position to the next byte `byte` (or to the end), nil at the end
      def byteindex(byte)
        s = __open
        raise ArgumentError, "index should be a byte (0 - 255)" unless byte.is_a?(Integer) && byte >= 0 && byte <= 255
        return nil if @pos >= s.bytesize
        i = s.index(byte.chr, @pos)
        (i || s.bytesize) - @pos
      end

      def size
        __open.bytesize
      end

      def close
        nil
      end

      def inspect
        "#<H2O::DB::Input>"
      end
      alias to_s inspect

      def to_json(*_options)
        H2O::DB.to_json(inspect)
      end

      def __open
        raise CLOSED, "stream closed" if @s.nil?
        @s
      end
    end

    # rack.errors: lines go to the server's error log (stderr).
    class Errors
      def write(s)
        s = s.to_s
        H2O::DB.__stderr(s)
        s.bytesize
      end

      def puts(*args)
        args = [""] if args.empty?
        args.each do |a|
          s = a.to_s
          write(s.end_with?("\n") ? s : s + "\n")
        end
        nil
      end

      def print(*args)
        args.each { |a| write(a) }
        nil
      end

      def <<(s)
        write(s)
        self
      end

      def flush
        self
      end
    end

    ERRORS = Errors.new

    # What a streamed body's Fiber yields to the C side (module/mruby/stream.c): STREAM alone
    # sends what __write buffered (or waits while the client is slower than the body), and
    # [STREAM, status, headers, body] starts the response.
    STREAM = Object.new.freeze

    # [status, headers, body] -> [status, [name, value, ...], [chunk, ...]] with every name
    # and value a String, for an Array body (sent in one go, with its length); any other body
    # is streamed (__stream) and the result is STREAM. Runs inside the Fiber.
    def self.__response(res, id)
      unless res.is_a?(Array) && res.size == 3
        raise TypeError, "a Rack app returns [status, headers, body], not #{res.class}"
      end
      status, headers, body = res
      status = Integer(status)
      raise ArgumentError, "HTTP status #{status} is out of range (100..999)" if status < 100 || status > 999
      flat = __headers(headers)
      if status == 399 # fall through to the next handler of the path, with these headers
        body.close if body.respond_to?(:close)
        return [399, flat, nil]
      end
      return __stream(id, status, flat, body) unless body.instance_of?(Array)
      chunks = []
      body.each { |chunk| chunks << chunk.to_s }
      [status, flat, chunks]
    end

    # A body sent as it is produced: status and headers go out now, each chunk as it comes;
    # body.close runs after the last one (or, from C, when the client leaves first).
    def self.__stream(id, status, flat, body)
      Fiber.yield([STREAM, status, flat, body])
      begin
        body.each do |chunk|
          __send_chunks if __write(id, chunk.to_s)
        end
      ensure
        __body_done(id)
        body.close if body.respond_to?(:close)
      end
      STREAM
    end

    def self.__send_chunks
      Fiber.yield(STREAM)
    rescue FiberError => e
      raise FiberError, "#{e.message}: a streamed body's each must yield from Ruby code running in the request's " \
                        "Fiber (not from a block called from C, nor from a Fiber of your own)"
    end

    # A Hash or an Array of pairs -> [name, value, ...], names lower case; a value with "\n"
    # (or an Array value) is several headers of that name.
    def self.__headers(headers)
      flat = []
      (headers || {}).each do |name, value|
        name = name.to_s.downcase
        if name.empty? || name.include?(":") || name.include?(" ") || name.include?("\r") ||
           name.include?("\n") || name.include?("\0")
          raise ArgumentError, "invalid response header name #{name.inspect}"
        end
        values = value.is_a?(Array) ? value.map(&:to_s) : value.to_s.split("\n")
        values = [""] if values.empty?
        values.each do |v|
          if v.include?("\r") || v.include?("\n") || v.include?("\0")
            raise ArgumentError, "response header #{name}: a value may not hold CR, LF or NUL"
          end
          flat << name << v
        end
      end
      flat
    end

    # style 0: "message (Class)"; 1: the same and the backtrace; 2: as h2o's mruby logs an
    # exception, "FILE:LINE: message (Class)" (where it was raised), then the other frames.
    def self.__describe(e, style = 1)
      msg = e.message.to_s
      s = "#{msg} (#{e.class})"
      bt = style == 0 ? nil : e.backtrace
      if style == 2
        s = e.class.to_s if msg.empty?
        if bt && !bt.empty?
          at = bt[0].to_s
          i = at.rindex(":in ")
          s = "#{i ? at[0, i] : at}: #{s}"
          bt = bt[1..-1]
        end
      end
      s += "\n    from " + bt.join("\n    from ") if bt && !bt.empty?
      s
    rescue Exception
      e.class.to_s
    end

    # Started by the C side in a new Fiber: app.call(env), then the body. Returns the
    # response (see __response) or the exception that ended it.
    RUNNER = proc do |app, env, id|
      begin
        H2O::DB.__response(app.call(env), id)
      rescue Exception => e
        e
      end
    end
  end
end
