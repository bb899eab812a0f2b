"""Virtual machines: their lifecycle, seed, snapshots, templates and SSH."""
