"""melu quickstart command (filled in by its issue)."""
