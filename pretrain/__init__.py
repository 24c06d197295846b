"""dinoflow pretrain package."""
