"""avssl.models."""
