"""melu serve command (filled in by its issue)."""
