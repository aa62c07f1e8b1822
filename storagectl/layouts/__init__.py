"""The layout model, its inference from legacy hosts, the record store and audit logic."""
