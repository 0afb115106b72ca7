-- demo/embed.conf's table (db.bind `schema:` runs this once, in h2o_db_prepare()).
CREATE TABLE IF NOT EXISTS greetings (
    id INTEGER PRIMARY KEY,
    lang TEXT NOT NULL,
    text TEXT NOT NULL
);
INSERT OR IGNORE INTO greetings (id, lang, text) VALUES (1, 'en', 'hello'), (2, 'fr', 'bonjour'), (3, 'de', 'hallo');
