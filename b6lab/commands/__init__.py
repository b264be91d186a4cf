"""One module per `b6lab` command: `add_arguments(parser)` and `run(args)`."""
