"""Who may ask and what it costs: keys, rate limits, concurrent slots, prices, billing, idempotency."""
