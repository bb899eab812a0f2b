"""Images: the local store, references, blobs, builds and disk probing."""
