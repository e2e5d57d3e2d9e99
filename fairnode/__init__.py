"""fairnode."""
