"""MovieLens readers and download."""
