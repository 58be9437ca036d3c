"""Training and evaluation data: pair records, dedup keys, the token cache, batching, eval sets."""
