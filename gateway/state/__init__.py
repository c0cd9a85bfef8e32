"""State that outlives a request: in-memory backends, and Redis shared by replicas."""
