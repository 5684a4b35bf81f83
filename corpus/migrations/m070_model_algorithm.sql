-- How a trained model was made, beside its parent and release: the algorithm (sft, rm, dpo,
-- grpo, or sft-rs for the loop's rejection-sampling SFT) and the reward definition it optimised
-- (for grpo: the rubric's criteria, weights and the judge; for dpo/sft: the rubric that labelled
-- its release). Rows from before this migration keep NULLs; their `kind` says the algorithm.
ALTER TABLE models ADD COLUMN algorithm VARCHAR;
ALTER TABLE models ADD COLUMN reward JSON;
