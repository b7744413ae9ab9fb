-- flexrun PostgreSQL store, schema version 2.
--
-- Idempotency keys whose request an instance is applying right now, and until when (on the
-- database clock): across the instances sharing the store, one request per key is applied at
-- a time, as within one engine. A claim of an instance that died lapses at `until`.
CREATE TABLE flexrun_claims (
    key text PRIMARY KEY,
    instance_id text NOT NULL,
    until timestamptz NOT NULL
);
