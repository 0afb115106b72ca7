# JSON for mruby handlers: Debian's mruby has no JSON gem. H2O::DB.to_json (C, json.c)
# writes nil, true, false, Integer, Float, String, Symbol, Array and Hash; other objects
# through their own to_json, else to_h, else to_s.
unless Object.const_defined?(:JSON)
  module JSON
    def self.generate(obj, *_options)
      H2O::DB.to_json(obj)
    end

    def self.dump(obj, *_options)
      H2O::DB.to_json(obj)
    end
  end
end

[Array, Hash, String, Symbol, Integer, Float, NilClass, TrueClass, FalseClass].each do |klass|
  klass.class_eval do
    def to_json(*_options)
      H2O::DB.to_json(self)
    end
  end
end
