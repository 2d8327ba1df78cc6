"""An empty plugin module: the CLI tests load it by name."""
