"""Files → canonical frames: MovieLens download, strict parsing, one reader per format."""
