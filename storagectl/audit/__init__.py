"""The audit: drift, orphans, unsafe images, interrupted migrations; Prometheus."""
