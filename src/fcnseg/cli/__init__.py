"""The ``fcnseg`` command line: one module per subcommand, each calling the library."""
