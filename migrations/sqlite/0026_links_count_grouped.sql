-- PostgreSQL's 0026 replaces its per-statement links trigger function
-- (0023) with one that groups the links before computing their hours.
-- SQLite's links triggers are per row and need nothing: this migration only
-- keeps the two backends' numbers aligned.
SELECT 1;
