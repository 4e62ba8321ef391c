"""Running backends over many images: datasets, shards, executors (local, Ray), figures, reports."""
