"""The box's web pages: first-boot setup, administration, status and self-test."""
