"""avssl.losses."""
