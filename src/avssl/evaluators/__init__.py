"""avssl.evaluators."""
