-- `python -m judge eval` (judge owns these; m080-m089): how often a judge agrees with human
-- preference labels. One row per (rubric version, judge, labelled set); a rerun replaces it.
-- judge is a jury member ('backend:model', 'verifier:<type>'), 'jury' (the rubric's aggregate)
-- or 'baseline:longer' (the longer answer wins). metrics holds every figure with its 95%
-- bootstrap interval: accuracy, accuracy_no_ties, position_flip_rate, first_slot_win_rate,
-- longer_wins_judge, longer_wins_labels, length_bias, by_category, and the rubric's criteria.
CREATE TABLE judge_evals (
    id VARCHAR PRIMARY KEY,            -- hash of rubric, rubric_version, rubric_hash, judge, labels_hash
    rubric VARCHAR NOT NULL,
    rubric_version VARCHAR,
    rubric_hash VARCHAR,
    judge VARCHAR NOT NULL,
    labels VARCHAR,                    -- the labelled set: a file, a source, or 'heldout-of:<model id>'
    labels_hash VARCHAR,               -- snapshot hash of the labelled pair ids
    n_pairs INTEGER NOT NULL,
    accuracy DOUBLE,                   -- ties and missing verdicts count half
    accuracy_lower DOUBLE,
    accuracy_upper DOUBLE,
    metrics JSON,
    run_id VARCHAR,
    created_at TIMESTAMP DEFAULT current_timestamp
);
