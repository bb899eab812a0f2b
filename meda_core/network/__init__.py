"""VM addresses, port forwards and MAC addresses, through the network backend."""
