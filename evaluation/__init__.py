"""dinoflow evaluation package."""
