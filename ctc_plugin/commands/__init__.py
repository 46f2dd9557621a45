"""Subcommands of the ``ctc-plugin`` command, one module each."""
