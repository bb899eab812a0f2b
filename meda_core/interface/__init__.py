"""The typed API of meda's operations: in process and over HTTP."""
