"""melu train command (filled in by its issue)."""
