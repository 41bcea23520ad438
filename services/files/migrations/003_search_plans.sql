-- Search latency at 100,000 chunks (bench/files_search.py; docs/benchmarks.md "Files service").
--
-- 1. text_candidates always plans its two queries for the actual arguments. PL/pgSQL caches
--    the plans of its statements per connection and, after five calls, may switch to a
--    generic plan; for `tsv @@ $1 AND entry_id = ANY($2) ... LIMIT $4` the generic plan
--    guesses a tiny LIMIT and walks chunks_by_entry over every chunk of the stores,
--    testing @@ row by row: measured 130-290 ms per search at 100k chunks against 2-6 ms for
--    the plan made with the real query (a GIN bitmap scan). Planning costs well under 1 ms.
ALTER FUNCTION text_candidates(bigint[], regconfig, text, integer, integer) SET plan_cache_mode = force_custom_plan;

-- 2. The full-text index without GIN's pending list. With fastupdate on, new entries collect
--    in an unsorted list (up to gin_pending_list_limit, 4 MB) that every search scans in full
--    until a vacuum merges it: about 450 pages, 2-4 ms added to each search. Chunks are
--    written once per file, at the pace of the embedding model, so inserting straight into
--    the index costs nothing that matters.
ALTER INDEX chunks_text SET (fastupdate = off);
SELECT gin_clean_pending_list('chunks_text'::regclass);
