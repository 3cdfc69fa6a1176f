"""Scripts that generate and check parts of docs/ (run from the repository root)."""
