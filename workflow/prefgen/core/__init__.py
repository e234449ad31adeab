"""Shared plumbing every stage uses: config, atomic I/O, seeding, logging."""
