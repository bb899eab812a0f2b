"""The plugin system: role interfaces, hook specs, discovery and selection."""
