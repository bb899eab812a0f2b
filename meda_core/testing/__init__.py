"""Test support for meda and its plugin authors: conformance suites, fakes, a test guest."""
