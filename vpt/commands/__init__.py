"""One module per subcommand: parse options, call library code, print with rich."""
