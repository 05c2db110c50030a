"""The KB store: segments, versions, compression, the retrieval index, search, edits, the session overlay."""
