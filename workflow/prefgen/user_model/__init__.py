"""Stage package: user_model."""
