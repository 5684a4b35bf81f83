-- How a code_exec verdict was produced: 'bwrap' (the isolated sandbox) or 'unsafe' (the user
-- passed --unsafe-exec or `unsafe: true` where bwrap could not start). NULL for LLM judgments,
-- other verifiers and rows from before this migration.
ALTER TABLE judgments ADD COLUMN sandbox VARCHAR;
