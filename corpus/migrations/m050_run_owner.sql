-- Which process a run belongs to, so that a run whose process died without recording an outcome
-- (SIGKILL, out of memory, power loss) is marked 'killed' by the next job started on that host
-- instead of staying 'running' for ever. Rows from before this migration have NULLs and are left
-- as they are.
ALTER TABLE runs ADD COLUMN host VARCHAR;
ALTER TABLE runs ADD COLUMN pid INTEGER;
