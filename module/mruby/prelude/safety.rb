# Debian's libmruby carries the io and socket gems, whose calls block the worker thread and
# so every request it serves. What a handler could reach of them is removed or fenced here
# (docs/mruby.md, "Blocking calls"):
#   - the socket classes are gone;
#   - IO.popen, IO.pipe, IO.select, Kernel#`, Kernel#open, Kernel#gets and the like are gone;
#   - files open for reading only (File.open(path, "w") raises NotImplementedError), and
#     File.delete/unlink/rename/chmod/symlink/umask are gone.
# There is no Kernel#sleep in this build.
[:Socket, :BasicSocket, :IPSocket, :TCPSocket, :TCPServer, :UDPSocket, :UNIXSocket, :UNIXServer, :Addrinfo].each do |name|
  Object.__send__(:remove_const, name) if Object.const_defined?(name)
end

[:popen, :_popen, :pipe, :_pipe, :select].each do |m|
  IO.singleton_class.__send__(:undef_method, m) if IO.respond_to?(m)
end
[:delete, :unlink, :rename, :chmod, :symlink, :umask, :truncate, :mkfifo].each do |m|
  File.singleton_class.__send__(:undef_method, m) if File.respond_to?(m)
end
[:`, :open, :gets, :system, :exec, :spawn, :fork, :sleep, :usleep, :syscall, :select].each do |m|
  Kernel.__send__(:undef_method, m) if Kernel.method_defined?(m)
end

module H2O
  module DB
    WRITE_FLAGS = [:WRONLY, :RDWR, :CREAT, :TRUNC, :APPEND].inject(0) do |flags, c|
      File.const_defined?(c) ? flags | File.const_get(c) : flags
    end

    def self.__check_read_only(mode)
      read_only = if mode.is_a?(Integer)
                    mode & WRITE_FLAGS == 0
                  else
                    m = mode.to_s
                    m.start_with?("r") && !m.include?("+")
                  end
      return if read_only
      raise NotImplementedError, "opening files for writing is disabled in h2o-db's mruby handlers " \
                                 "(it would block every request of the thread): mode #{mode.inspect}"
    end
  end
end

class << IO
  alias_method :__h2o_db_sysopen, :sysopen

  def sysopen(path, mode = "r", perm = 0666)
    H2O::DB.__check_read_only(mode)
    __h2o_db_sysopen(path, mode, perm)
  end
end
