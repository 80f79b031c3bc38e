"""One module per ``lesionseg`` subcommand."""
