"""dinoflow data_catalog package."""
