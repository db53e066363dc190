"""Examples that run against local servers; see each directory's README."""
