"""Long context: RoPE base/scaling helpers, key retrieval and perplexity versus length."""
