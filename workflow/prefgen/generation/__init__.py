"""Stage package: generation."""
