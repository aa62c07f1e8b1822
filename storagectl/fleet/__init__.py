"""Many hosts at once: merging the per-host audit results (``storagectl fleet``)."""
