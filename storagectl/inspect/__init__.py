"""Inference and verification: an instance's layout from authoritative sources."""
