"""The per-instance record (storage.yaml): schema, store, persist, mirror, drift."""
