# The Rack side of h2o-db's mruby handlers: rack.input, rack.errors, and the runner that
# the C side starts in a new Fiber for every request (module/mruby/handler.c).
module H2O
  module DB
    # rack.input: the request body (h2o has read all of it before the handler runs).
    # @s and @pos are set by the C side.
    class Input
      def initialize(string = "")
        @s = string
        @pos = 0
      end

      def read(length = nil, buffer = nil)
        if length.nil?
          out = @pos < @s.bytesize ? @s.byteslice(@pos, @s.bytesize - @pos) : ""
          @pos = @s.bytesize
        else
          raise ArgumentError, "negative length #{length}" if length < 0
          if @pos >= @s.bytesize
            out = length == 0 ? "" : nil
          else
            out = @s.byteslice(@pos, length)
            @pos += out.bytesize
          end
        end
        if buffer && out
          buffer.replace(out)
          return buffer
        end
        out
      end

      def gets
        return nil if @pos >= @s.bytesize
        nl = @s.index("\n", @pos)
        stop = nl ? nl + 1 : @s.bytesize
        line = @s.byteslice(@pos, stop - @pos)
        @pos = stop
        line
      end

      def each
        while (line = gets)
          yield line
        end
        self
      end

      def rewind
        @pos = 0
        0
      end

      def size
        @s.bytesize
      end

      def close
        nil
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

    # [status, headers, body] -> [status, [name, value, ...], [chunk, ...]] with every name
    # and value a String; the body is iterated and closed here, inside the Fiber.
    def self.__response(res)
      unless res.is_a?(Array) && res.size == 3
        raise TypeError, "a Rack app returns [status, headers, body], not #{res.class}"
      end
      status, headers, body = res
      status = Integer(status)
      raise ArgumentError, "HTTP status #{status} is out of range (100..999)" if status < 100 || status > 999
      if status == 399 # fall through to the next handler of the path
        body.close if body.respond_to?(:close)
        return [399, nil, nil]
      end
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
      chunks = []
      begin
        body.each { |chunk| chunks << chunk.to_s }
      ensure
        body.close if body.respond_to?(:close)
      end
      [status, flat, chunks]
    end

    def self.__describe(e, backtrace = true)
      s = "#{e.message} (#{e.class})"
      bt = backtrace ? e.backtrace : nil
      s += "\n    from " + bt.join("\n    from ") if bt && !bt.empty?
      s
    rescue Exception
      e.class.to_s
    end

    # Started by the C side in a new Fiber: app.call(env), then the body. Returns the
    # response (see __response) or the exception that ended it.
    RUNNER = proc do |app, env|
      begin
        H2O::DB.__response(app.call(env))
      rescue Exception => e
        e
      end
    end
  end
end
