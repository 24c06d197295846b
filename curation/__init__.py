"""dinoflow curation package."""
