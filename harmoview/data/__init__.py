"""Training data over datakit's ``samples``: the dataset, resolution buckets and frame reading."""
