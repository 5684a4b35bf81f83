-- Batch mode of the openai backend (m110-m119): a way of sending, not a stage. Answers still
-- land in `calls` by key; these tables say which request keys went into which provider batch,
-- so a rerun reattaches to a live batch instead of paying for its requests again.
-- A row is written before anything is uploaded (status 'preparing'): its `id` is also the tag
-- put into the batch's metadata, so a batch created just before a kill is found by listing.
CREATE TABLE batches (
    id VARCHAR PRIMARY KEY,            -- our tag (random), also metadata.rlaif_tag of the batch
    backend VARCHAR NOT NULL,
    model VARCHAR NOT NULL,
    endpoint VARCHAR,                  -- base URL without credentials; NULL for an exported file
    mode VARCHAR NOT NULL,             -- batch (the provider's Batch API) | export (a file for vllm run-batch)
    provider_id VARCHAR,               -- the provider's batch id, once created
    input_file_id VARCHAR,
    output_file_id VARCHAR,
    error_file_id VARCHAR,
    status VARCHAR NOT NULL,           -- preparing | uploaded | the provider's status | exported
    collected BOOLEAN NOT NULL DEFAULT false,  -- output and error files read and stored
    n_requests INTEGER NOT NULL,
    n_ok INTEGER,                      -- lines stored as answers
    n_failed INTEGER,                  -- lines stored as permanent failures
    n_resend INTEGER,                  -- failed, expired or cancelled: sent again in a later batch
    error VARCHAR,
    run_id VARCHAR,
    created_at TIMESTAMP DEFAULT current_timestamp,
    updated_at TIMESTAMP
);

CREATE TABLE batch_requests (
    batch_id VARCHAR NOT NULL,         -- batches.id
    key VARCHAR NOT NULL,              -- calls.key; the line's custom_id
    request JSON,                      -- the ChatRequest, kept for exported files (import needs it)
    PRIMARY KEY (batch_id, key)
);
