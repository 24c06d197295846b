"""dinoflow flows package."""
