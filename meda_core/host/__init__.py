"""Host helpers: processes, namespaces, locks and private files."""
