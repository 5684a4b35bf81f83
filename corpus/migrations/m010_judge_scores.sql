-- Judge outputs beyond the raw judgments (judge owns m010-m019).
-- criterion_scores: one row per (generation, rubric, rubric_version, criterion): the jury's
-- aggregate of that criterion's judgments, recomputed by every judge run over the items it
-- touches. Derived data, so the judge overwrites it (delete + insert) rather than appending.
CREATE TABLE criterion_scores (
    id VARCHAR PRIMARY KEY,            -- hash of generation_id, rubric, rubric_version, criterion
    generation_id VARCHAR NOT NULL,
    prompt_id VARCHAR,
    rubric VARCHAR NOT NULL,
    rubric_version VARCHAR,
    rubric_hash VARCHAR,
    criterion VARCHAR NOT NULL,
    criterion_hash VARCHAR,
    kind VARCHAR,                      -- llm | verifier
    score DOUBLE,                      -- jury aggregate on the criterion's own scale
    score_norm DOUBLE,                 -- the same mapped to [0, 1]
    weight DOUBLE NOT NULL DEFAULT 1,  -- the criterion's weight in the rubric
    n_judgments INTEGER NOT NULL,      -- judgments that parsed and entered the aggregate
    agreement DOUBLE,                  -- per-item jury agreement (1 - normalised spread), NULL for one judgment
    aggregation VARCHAR,               -- mean | majority | weighted
    run_id VARCHAR,
    created_at TIMESTAMP DEFAULT current_timestamp
);

-- Pairwise verdicts after both orders are reconciled: winner 'a' | 'b' | 'tie'.
CREATE TABLE pair_verdicts (
    id VARCHAR PRIMARY KEY,            -- hash of generation_a, generation_b, rubric, rubric_version, criterion
    prompt_id VARCHAR,
    generation_a VARCHAR NOT NULL,
    generation_b VARCHAR NOT NULL,
    rubric VARCHAR NOT NULL,
    rubric_version VARCHAR,
    criterion VARCHAR NOT NULL,
    winner VARCHAR NOT NULL,
    consistent BOOLEAN NOT NULL,       -- false: the two orders disagreed (counted as a tie)
    n_judgments INTEGER NOT NULL,
    run_id VARCHAR,
    created_at TIMESTAMP DEFAULT current_timestamp
);

CREATE VIEW judge_scores AS
SELECT generation_id, prompt_id, rubric, rubric_version, criterion, score, score_norm, n_judgments
FROM criterion_scores;

-- Rubric-weighted overall score over the criteria that have a score.
CREATE VIEW generation_scores AS
SELECT generation_id, prompt_id, rubric, rubric_version,
       SUM(weight * score_norm) / NULLIF(SUM(weight), 0) AS score_norm,
       COUNT(*) AS n_criteria
FROM criterion_scores
WHERE score_norm IS NOT NULL
GROUP BY generation_id, prompt_id, rubric, rubric_version;
