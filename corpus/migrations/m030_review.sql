-- The human spot-check queue (review owns m030-m039).

-- Reviewers log in with a token printed once by `python -m review add-reviewer NAME`. The token
-- is "<token_id>.<secret>": token_id finds the row, only scrypt(secret, salt) is stored.
CREATE TABLE reviewers (
    name VARCHAR PRIMARY KEY,
    token_id VARCHAR NOT NULL,
    token_salt VARCHAR NOT NULL,
    token_hash VARCHAR NOT NULL,
    disabled BOOLEAN NOT NULL DEFAULT false,
    created_at TIMESTAMP DEFAULT current_timestamp
);

-- Web sessions: only a hash of the cookie is stored, so a copy of the corpus logs nobody in.
CREATE TABLE review_sessions (
    id_hash VARCHAR PRIMARY KEY,
    reviewer VARCHAR NOT NULL,
    created_at TIMESTAMP DEFAULT current_timestamp,
    expires_at TIMESTAMP NOT NULL
);

-- The sample put in front of reviewers, in the order they see it (priority ascending).
CREATE TABLE review_sample (
    id VARCHAR PRIMARY KEY,            -- hash of target_id: an item is queued once
    target_id VARCHAR NOT NULL,        -- generations.id
    target_kind VARCHAR NOT NULL,      -- generation
    prompt_id VARCHAR,
    priority INTEGER NOT NULL,         -- queue position; disputed items get the lowest
    stratum VARCHAR NOT NULL,          -- 'rubric/criterion/bucket' the item was drawn for, or 'disputed'
    disputed BOOLEAN NOT NULL,
    reason VARCHAR,                    -- why it is disputed: jury_disagreement, position_inconsistent, near_threshold
    score_norm DOUBLE,                 -- the overall judge score when sampled
    run_id VARCHAR,
    created_at TIMESTAMP DEFAULT current_timestamp
);

-- Exactly which accepted_sft / preference_pairs rows a release holds (train reads these).
CREATE TABLE release_items (
    release_id VARCHAR NOT NULL,
    kind VARCHAR NOT NULL,             -- sft | pair
    item_id VARCHAR NOT NULL           -- accepted_sft.id | preference_pairs.id
);

-- Settings the views below read. score_threshold binarizes a judge's score_norm into
-- approve (>=) / reject for the agreement figures; `python -m review report --score-threshold`.
CREATE TABLE review_settings (
    key VARCHAR PRIMARY KEY,
    value DOUBLE NOT NULL
);
INSERT INTO review_settings VALUES ('score_threshold', 0.5);

-- Each reviewer's current verdict per item: a second verdict replaces the first here, while
-- `reviews` keeps the whole history.
CREATE VIEW review_verdicts AS
SELECT id, target_id, reviewer, verdict, note, edited_generation_id, created_at
FROM (
    SELECT r.*, row_number() OVER (PARTITION BY target_id, reviewer ORDER BY created_at DESC, id DESC) AS rn
    FROM reviews r
) WHERE rn = 1;

-- The queue with its progress. An item is approved when a strict majority of its reviewers'
-- current verdicts approve; an edit counts as "the original was not good enough".
CREATE VIEW review_queue AS
SELECT s.id, s.priority, s.target_id, s.target_kind, s.prompt_id, s.stratum, s.disputed, s.reason,
       s.score_norm,
       count(v.reviewer) AS n_reviews,
       count(v.reviewer) FILTER (WHERE v.verdict = 'approve') AS n_approve,
       count(v.reviewer) FILTER (WHERE v.verdict = 'reject') AS n_reject,
       count(v.reviewer) FILTER (WHERE v.verdict = 'edit') AS n_edit,
       CASE WHEN count(v.reviewer) = 0 THEN 'pending'
            WHEN 2 * count(v.reviewer) FILTER (WHERE v.verdict = 'approve') > count(v.reviewer) THEN 'approved'
            ELSE 'rejected' END AS status
FROM review_sample s LEFT JOIN review_verdicts v ON v.target_id = s.target_id
GROUP BY ALL
ORDER BY s.priority;

-- Judge-vs-human agreement per judge, rubric version and criterion. Each observation is one
-- reviewer's current verdict on a generation (approve = 1; reject or edit = 0) against one
-- judge's score on it (mean over samples/orders), binarized at score_threshold. A judge's raw
-- score is mapped to [0, 1] with meta.score_norm when the judge stored it, else with the linear
-- map the judge used for that criterion's jury scores (fitted from criterion_scores). Kappa is
-- Cohen's kappa of the 2x2 table; NULL when chance agreement is 1 (one class only).
CREATE VIEW judge_human_agreement AS
WITH scale AS (
    SELECT rubric, rubric_version, criterion,
           regr_slope(score_norm, score) AS slope, regr_intercept(score_norm, score) AS icpt
    FROM criterion_scores
    WHERE score IS NOT NULL AND score_norm IS NOT NULL
    GROUP BY rubric, rubric_version, criterion
), per_judge AS (
    SELECT j.target_id AS generation_id, j.judge, j.rubric, j.rubric_version, j.criterion,
           avg(coalesce(TRY_CAST(json_extract_string(j.meta, '$.score_norm') AS DOUBLE),
                        s.icpt + s.slope * j.score)) AS score_norm
    FROM judgments j
    LEFT JOIN scale s ON s.rubric = j.rubric AND s.criterion = j.criterion
                     AND s.rubric_version IS NOT DISTINCT FROM j.rubric_version
    WHERE j.target_kind = 'generation' AND j.parse_status <> 'failed' AND j.score IS NOT NULL
    GROUP BY j.target_id, j.judge, j.rubric, j.rubric_version, j.criterion
), obs AS (
    SELECT p.judge, p.rubric, p.rubric_version, p.criterion,
           CASE WHEN p.score_norm >= (SELECT value FROM review_settings WHERE key = 'score_threshold')
                THEN 1 ELSE 0 END AS jv,
           CASE WHEN v.verdict = 'approve' THEN 1 ELSE 0 END AS hv
    FROM per_judge p JOIN review_verdicts v ON v.target_id = p.generation_id
    WHERE p.score_norm IS NOT NULL
), tab AS (
    SELECT judge, rubric, rubric_version, criterion, count(*) AS n,
           sum(jv * hv)::DOUBLE AS a, sum(jv * (1 - hv))::DOUBLE AS b,
           sum((1 - jv) * hv)::DOUBLE AS c, sum((1 - jv) * (1 - hv))::DOUBLE AS d
    FROM obs GROUP BY judge, rubric, rubric_version, criterion
), chance AS (
    SELECT *, (a + d) / n AS po, ((a + b) * (a + c) + (c + d) * (b + d)) / (n * n) AS pe FROM tab
)
SELECT judge, rubric, rubric_version, criterion, n, po AS agreement,
       CASE WHEN pe < 1 THEN (po - pe) / (1 - pe) END AS kappa
FROM chance;
