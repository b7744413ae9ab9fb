-- flexrun PostgreSQL store, schema version 1.
--
-- Every value column holds exactly the bytes the shared codec encodes (src/store/codec.rs),
-- the same values the embedded store keeps; the other columns are keys and the few facts the
-- database itself checks, filters or sorts on. Integers of the records are signed here
-- (bigint for seqs and millisecond times, integer for versions and attempts).

-- One row per run: its head (rewritten on every commit), its envelope and its queue.
CREATE TABLE flexrun_runs (
    run_id uuid PRIMARY KEY,
    -- RunStatus tag: 1 active, 2 completed, 3 failed, 4 cancelled.
    status smallint NOT NULL CHECK (status BETWEEN 1 AND 4),
    created_at bigint NOT NULL,
    updated_at bigint NOT NULL,
    last_seq bigint NOT NULL CHECK (last_seq >= 0),
    plan_version integer NOT NULL CHECK (plan_version >= 0),
    head bytea NOT NULL,
    envelope bytea NOT NULL,
    -- The queue of acknowledged, not yet applied firings; NULL when empty.
    queued bytea,
    -- The instance that drives the run (flexrun_instances.instance_id); NULL after it left.
    owner text
);

-- Active runs by owner: recovery, takeover and the instances' run counts.
CREATE INDEX flexrun_runs_active_owner ON flexrun_runs (owner, run_id) WHERE status = 1;

-- The event log. An event can only follow the stored event before it: seq 1 follows nothing,
-- seq n > 1 names n - 1 in prev_seq, and the foreign key makes that event exist. With the
-- primary key (no seq twice) the log of a run is gap-free from 1, whatever writes it.
CREATE TABLE flexrun_events (
    run_id uuid NOT NULL REFERENCES flexrun_runs (run_id),
    seq bigint NOT NULL,
    prev_seq bigint,
    value bytea NOT NULL,
    CONSTRAINT flexrun_events_pkey PRIMARY KEY (run_id, seq),
    CONSTRAINT flexrun_events_follows CHECK (
        (seq = 1 AND prev_seq IS NULL)
        OR (seq > 1 AND prev_seq IS NOT NULL AND prev_seq = seq - 1)
    ),
    CONSTRAINT flexrun_events_prev_fkey FOREIGN KEY (run_id, prev_seq)
        REFERENCES flexrun_events (run_id, seq)
);

-- What the self-reference looks up when events are deleted.
CREATE INDEX flexrun_events_prev ON flexrun_events (run_id, prev_seq);

-- Plan versions: append-only and gap-free from 1, enforced like the event seqs.
CREATE TABLE flexrun_plans (
    run_id uuid NOT NULL REFERENCES flexrun_runs (run_id),
    version integer NOT NULL,
    prev_version integer,
    value bytea NOT NULL,
    CONSTRAINT flexrun_plans_pkey PRIMARY KEY (run_id, version),
    CONSTRAINT flexrun_plans_follows CHECK (
        (version = 1 AND prev_version IS NULL)
        OR (version > 1 AND prev_version IS NOT NULL AND prev_version = version - 1)
    ),
    CONSTRAINT flexrun_plans_prev_fkey FOREIGN KEY (run_id, prev_version)
        REFERENCES flexrun_plans (run_id, version)
);

CREATE INDEX flexrun_plans_prev ON flexrun_plans (run_id, prev_version);

-- Node attempts. status: 1 running (may be rewritten), 2 completed, 3 failed (final).
CREATE TABLE flexrun_nodes (
    run_id uuid NOT NULL REFERENCES flexrun_runs (run_id),
    node_id text NOT NULL,
    attempt integer NOT NULL,
    status smallint NOT NULL CHECK (status BETWEEN 1 AND 3),
    value bytea NOT NULL,
    CONSTRAINT flexrun_nodes_pkey PRIMARY KEY (run_id, node_id, attempt)
);

-- HITL records. status: 1 pending (may be rewritten), 2 resolved (final).
CREATE TABLE flexrun_hitl (
    run_id uuid NOT NULL REFERENCES flexrun_runs (run_id),
    request_id text NOT NULL,
    status smallint NOT NULL CHECK (status BETWEEN 1 AND 2),
    value bytea NOT NULL,
    CONSTRAINT flexrun_hitl_pkey PRIMARY KEY (run_id, request_id)
);

-- Idempotency records; they outlive their run until they expire.
CREATE TABLE flexrun_requests (
    key text PRIMARY KEY,
    run_id uuid NOT NULL,
    created_at bigint NOT NULL,
    value bytea NOT NULL
);

CREATE INDEX flexrun_requests_created ON flexrun_requests (created_at);

-- The catalog.
CREATE TABLE flexrun_facets (
    name text PRIMARY KEY,
    value bytea NOT NULL
);

CREATE TABLE flexrun_capabilities (
    id text PRIMARY KEY,
    value bytea NOT NULL
);

-- The engine instances sharing the store, with their leases (database clock).
CREATE TABLE flexrun_instances (
    instance_id text PRIMARY KEY,
    address text,
    joined_at timestamptz NOT NULL,
    lease_until timestamptz NOT NULL
);
