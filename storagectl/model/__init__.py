"""The data types storagectl passes around (no I/O here)."""
