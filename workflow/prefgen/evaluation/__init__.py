"""Stage package: evaluation."""
