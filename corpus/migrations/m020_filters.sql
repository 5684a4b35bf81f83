-- Filters outputs (filters owns m020-m029). A filters run writes flags (stage 'filters'), pairs
-- (content-addressed, shared across runs) and filter_selections: which items that run put in
-- the SFT set and the pair set. The views follow the latest successful filters run, so a changed
-- threshold is a re-run of the filters only; older runs stay queryable by run_id.
CREATE TABLE filter_selections (
    id VARCHAR PRIMARY KEY,            -- hash of run_id, kind, item_id
    run_id VARCHAR NOT NULL,           -- runs.id of the filters run
    kind VARCHAR NOT NULL,             -- sft | pair
    item_id VARCHAR NOT NULL,          -- sft: generations.id; pair: pairs.id
    prompt_id VARCHAR NOT NULL,
    score DOUBLE,                      -- sft: the candidate's score_norm; pair: the margin
    method VARCHAR,                    -- sft: rejection_sampling; pair: best_worst | all | west_of_n
    rank INTEGER,                      -- sft: 1 = best candidate of its prompt
    created_at TIMESTAMP DEFAULT current_timestamp
);

CREATE VIEW latest_filters_run AS
SELECT id AS run_id, started_at, ended_at, config, summary
FROM runs WHERE command = 'filters' AND status = 'ok'
ORDER BY ended_at DESC, started_at DESC LIMIT 1;

-- TRL conversational format: the prompt messages followed by the chosen assistant reply.
CREATE VIEW accepted_sft AS
SELECT g.id, g.prompt_id,
       to_json(list_append(from_json(p.messages, '["JSON"]'),
                           json_object('role', 'assistant', 'content', g.response))) AS messages,
       s.score AS score_norm
FROM filter_selections s
JOIN latest_filters_run r ON s.run_id = r.run_id
JOIN generations g ON g.id = s.item_id
JOIN prompts p ON p.id = g.prompt_id
WHERE s.kind = 'sft';

-- TRL conversational preference format: prompt messages; chosen and rejected as one assistant turn.
CREATE VIEW preference_pairs AS
SELECT pr.id, pr.prompt_id,
       p.messages AS prompt,
       json_array(json_object('role', 'assistant', 'content', c.response)) AS chosen,
       json_array(json_object('role', 'assistant', 'content', rj.response)) AS rejected,
       s.score AS margin, pr.method
FROM filter_selections s
JOIN latest_filters_run r ON s.run_id = r.run_id
JOIN pairs pr ON pr.id = s.item_id
JOIN prompts p ON p.id = pr.prompt_id
JOIN generations c ON c.id = pr.chosen_id
JOIN generations rj ON rj.id = pr.rejected_id
WHERE s.kind = 'pair';

-- What the latest filters run decided, one row per flag (nothing is ever deleted).
CREATE VIEW filter_decisions AS
SELECT f.target_id, f.target_kind, f.kind, f.reason, f.details
FROM flags f JOIN latest_filters_run r ON f.run_id = r.run_id
WHERE f.stage = 'filters';
