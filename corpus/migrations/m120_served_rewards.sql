-- The reward service (`python -m judge serve`, owns m120-m129). A served reward is a judgment
-- like any other: the prompt, the response (as a generation of backend 'served'), the judgments,
-- flags and criterion_scores go to their usual tables; this table adds one row per item a trainer
-- asked about, tagged with the caller's run and step, so SQL can ask what a policy was rewarded
-- for at each step. Written in batches by the server's single writer.
CREATE TABLE served_rewards (
    id VARCHAR PRIMARY KEY,            -- hash of reward_key, caller_run, step, slot: a retried batch is the same rows
    reward_key VARCHAR NOT NULL,       -- hash of rubric_hash, prompt, response, label, metadata: identical items share it
    generation_id VARCHAR NOT NULL,    -- generations.id of the served response (backend 'served')
    prompt_id VARCHAR NOT NULL,
    rubric VARCHAR NOT NULL,
    rubric_version VARCHAR,
    rubric_hash VARCHAR NOT NULL,
    reward DOUBLE,                     -- the rubric-weighted score in [0, 1]; NULL when the item failed
    scores JSON,                       -- {criterion: score_norm in [0, 1] or null}
    flags JSON,                        -- ["verifier_failed", "judge_injection", ...] raised on this item
    error VARCHAR,                     -- why the item has no reward (timeout, no criterion scored, ...)
    label VARCHAR,                     -- the caller's label (ground truth), as JSON text
    caller_run VARCHAR,                -- the trainer's run tag (e.g. a wandb run name)
    step BIGINT,                       -- the trainer's step
    slot INTEGER,                      -- the item's position in its request
    cached BOOLEAN NOT NULL,           -- answered from the reward cache
    latency_ms DOUBLE,
    run_id VARCHAR,                    -- runs.id of the `judge serve` process
    created_at TIMESTAMP DEFAULT current_timestamp
);

-- One row per (served reward, criterion): what the policy was rewarded for, criterion by criterion.
CREATE VIEW served_reward_criteria AS
SELECT s.id AS served_id, s.caller_run, s.step, s.rubric, s.rubric_version, s.generation_id, s.reward,
       c.key AS criterion, TRY_CAST(c.value AS DOUBLE) AS score_norm, s.created_at
FROM served_rewards s, json_each(s.scores) c;
