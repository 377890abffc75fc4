"""avssl.objectives."""
