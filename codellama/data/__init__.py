"""Code data: ingest, filter, dedup, mix, tokenize and pack into token shards."""
