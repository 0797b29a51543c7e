-- Schema 1: the job catalogue every release starts from.
CREATE TABLE jobs (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    source_path TEXT NOT NULL,
    schedule TEXT NOT NULL
);
