"""The ``protodb`` command line (installed as ``protodb_cli``): parsing and printing only."""
