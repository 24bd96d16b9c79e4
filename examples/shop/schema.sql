CREATE TABLE IF NOT EXISTS items (id TEXT PRIMARY KEY, name TEXT NOT NULL);
INSERT OR REPLACE INTO items (id, name) VALUES ('1', 'pen'), ('2', 'ink');
