"""HTTP layer: request handlers only validate and enqueue; the pipeline does the work."""
