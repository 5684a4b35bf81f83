-- Training (train/ owns these). Append-only: add m041+ for changes.

-- One row per logged optimizer step of a training run: the loss curve lives in the corpus.
CREATE TABLE train_steps (
    id VARCHAR PRIMARY KEY,            -- hash of model_id, step
    model_id VARCHAR NOT NULL,         -- models.id of the model being trained
    run_id VARCHAR,
    step INTEGER NOT NULL,
    epoch DOUBLE,
    loss DOUBLE,
    learning_rate DOUBLE,
    metrics JSON,                      -- everything else the trainer logged (accuracy, rewards/margins, ...)
    created_at TIMESTAMP DEFAULT current_timestamp
);

-- One row per `python -m train eval`: a model measured against a baseline on a prompt set.
CREATE TABLE model_evals (
    id VARCHAR PRIMARY KEY,            -- hash of model_id, baseline_id, prompts, judge
    model_id VARCHAR NOT NULL,
    baseline_id VARCHAR,
    prompts VARCHAR,                   -- the prompt file or set the eval used
    judge VARCHAR,                     -- backend:model of the win-rate judge (not the label judge)
    metrics JSON,                      -- win_rate, pass_rate, pass_rate_by_check, mean_words, rm_accuracy, ...
    run_id VARCHAR,
    created_at TIMESTAMP DEFAULT current_timestamp
);

-- The model-trains-model loop: one row per (loop, round, stage) that finished.
-- A restart resumes at the first stage of the first round without a 'done' row.
CREATE TABLE loop_stages (
    id VARCHAR PRIMARY KEY,            -- hash of loop_id, round, stage
    loop_id VARCHAR NOT NULL,
    round INTEGER NOT NULL,
    stage VARCHAR NOT NULL,            -- generate | judge | filter | review | train | eval
    status VARCHAR NOT NULL,           -- done | waiting
    result JSON,                       -- the stage function's summary dict
    run_id VARCHAR,
    created_at TIMESTAMP DEFAULT current_timestamp
);

CREATE TABLE loops (
    id VARCHAR PRIMARY KEY,            -- hash of prompts, rubric, base: the same command resumes
    config JSON,
    base_model_id VARCHAR,
    created_at TIMESTAMP DEFAULT current_timestamp
);
