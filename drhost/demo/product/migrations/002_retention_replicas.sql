-- Schema 2 (2.0.0): per-job retention and one replica target per job.
ALTER TABLE jobs ADD COLUMN retention_days INTEGER NOT NULL DEFAULT 30;
CREATE TABLE replicas (
    id INTEGER PRIMARY KEY,
    job_id INTEGER NOT NULL REFERENCES jobs(id),
    target TEXT NOT NULL,
    last_sync TEXT
);
-- Existing jobs must keep replicating after the upgrade, so each one gets its replica now.
INSERT INTO replicas (job_id, target, last_sync)
    SELECT id, 'dr-site-b:/replicas/' || name, NULL FROM jobs ORDER BY id;
CREATE INDEX replicas_job_id ON replicas (job_id);
