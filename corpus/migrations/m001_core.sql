-- Core tables. Append-only: never edit a migration that has shipped; add the next one.
-- Ids are content hashes (corpus.ids.content_id) unless said otherwise.
-- JSON columns hold canonical JSON text.

CREATE TABLE runs (
    id VARCHAR PRIMARY KEY,            -- random: a run is an event, not content
    command VARCHAR NOT NULL,          -- e.g. 'generate', 'judge'
    argv JSON,                         -- the command line, secrets removed
    config JSON,                       -- the resolved configuration
    code_version VARCHAR,
    started_at TIMESTAMP NOT NULL,
    ended_at TIMESTAMP,
    status VARCHAR NOT NULL,           -- running | ok | failed | interrupted
    summary JSON
);

CREATE TABLE prompts (
    id VARCHAR PRIMARY KEY,            -- hash of messages
    messages JSON NOT NULL,            -- [{role, content}, ...] ending with a user turn
    text VARCHAR NOT NULL,             -- the last user turn, for search and dedup
    source VARCHAR,                    -- file:line, dataset, sql, synth:<run>
    meta JSON,                         -- anything else the source carried (tests, reference, category)
    run_id VARCHAR,
    created_at TIMESTAMP DEFAULT current_timestamp
);

CREATE TABLE generations (
    id VARCHAR PRIMARY KEY,            -- hash of prompt_id, model, params, sample_idx
    prompt_id VARCHAR NOT NULL,
    backend VARCHAR NOT NULL,
    model VARCHAR NOT NULL,
    params JSON NOT NULL,              -- sampling params without the per-sample seed
    sample_idx INTEGER NOT NULL,
    seed BIGINT,
    response VARCHAR NOT NULL,
    finish_reason VARCHAR,             -- stop | length
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    latency_ms DOUBLE,
    provenance VARCHAR NOT NULL DEFAULT 'model',  -- model | human
    parent_id VARCHAR,                 -- for a human edit: the generation it corrects
    call_key VARCHAR,                  -- calls.key of the request that produced it
    run_id VARCHAR,
    created_at TIMESTAMP DEFAULT current_timestamp
);

CREATE TABLE calls (
    key VARCHAR PRIMARY KEY,           -- hash of backend, model, request
    backend VARCHAR NOT NULL,
    model VARCHAR NOT NULL,
    request JSON NOT NULL,
    response JSON,
    status VARCHAR NOT NULL,           -- ok | failed | failed_permanent
    error VARCHAR,
    latency_ms DOUBLE,
    run_id VARCHAR,
    created_at TIMESTAMP DEFAULT current_timestamp
);

CREATE TABLE failures (
    id VARCHAR PRIMARY KEY,            -- hash of stage, target, error
    stage VARCHAR NOT NULL,
    target_id VARCHAR,
    error VARCHAR NOT NULL,
    run_id VARCHAR,
    created_at TIMESTAMP DEFAULT current_timestamp
);

CREATE TABLE judgments (
    id VARCHAR PRIMARY KEY,
    target_id VARCHAR NOT NULL,        -- generation id, or pair key for pairwise
    target_kind VARCHAR NOT NULL,      -- generation | pair
    generation_a VARCHAR,              -- pairwise: the candidate shown first
    generation_b VARCHAR,
    judge VARCHAR NOT NULL,            -- backend:model
    rubric VARCHAR NOT NULL,
    rubric_version VARCHAR,
    rubric_hash VARCHAR,
    criterion VARCHAR NOT NULL,
    criterion_hash VARCHAR,
    sample_idx INTEGER DEFAULT 0,
    score DOUBLE,
    score_expected DOUBLE,             -- probability-weighted score where logprobs exist
    rationale VARCHAR,
    raw VARCHAR,
    parse_status VARCHAR NOT NULL,     -- ok | retried | failed
    "order" VARCHAR,                   -- pairwise: ab | ba
    meta JSON,
    run_id VARCHAR,
    created_at TIMESTAMP DEFAULT current_timestamp
);

CREATE TABLE flags (
    id VARCHAR PRIMARY KEY,
    target_id VARCHAR NOT NULL,
    target_kind VARCHAR NOT NULL,      -- prompt | generation | pair | judgment
    kind VARCHAR NOT NULL,             -- e.g. near_duplicate, position_inconsistent, judge_injection
    reason VARCHAR,
    stage VARCHAR NOT NULL,            -- judge | filters | review
    details JSON,
    run_id VARCHAR,
    created_at TIMESTAMP DEFAULT current_timestamp
);

CREATE TABLE pairs (
    id VARCHAR PRIMARY KEY,
    prompt_id VARCHAR NOT NULL,
    chosen_id VARCHAR NOT NULL,
    rejected_id VARCHAR NOT NULL,
    margin DOUBLE,
    method VARCHAR NOT NULL,
    run_id VARCHAR,
    created_at TIMESTAMP DEFAULT current_timestamp
);

CREATE TABLE reviews (
    id VARCHAR PRIMARY KEY,
    target_id VARCHAR NOT NULL,
    reviewer VARCHAR NOT NULL,
    verdict VARCHAR NOT NULL,          -- approve | reject | edit
    note VARCHAR,
    edited_generation_id VARCHAR,
    created_at TIMESTAMP DEFAULT current_timestamp
);

CREATE TABLE releases (
    id VARCHAR PRIMARY KEY,
    snapshot_hash VARCHAR NOT NULL,
    sample_stats JSON,
    decision VARCHAR NOT NULL,
    run_id VARCHAR,
    created_at TIMESTAMP DEFAULT current_timestamp
);

CREATE TABLE models (
    id VARCHAR PRIMARY KEY,
    parent_id VARCHAR,
    kind VARCHAR NOT NULL,             -- base | sft | rm | dpo
    path VARCHAR NOT NULL,
    base VARCHAR,
    release_id VARCHAR,
    config JSON,
    metrics JSON,
    run_id VARCHAR,
    created_at TIMESTAMP DEFAULT current_timestamp
);
