"""melu evaluate command (filled in by its issue)."""
