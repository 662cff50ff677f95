"""The ``lightning-ada`` command line: the LightningCLI, its parser, short names, the ``query``
subcommand, evaluation folders, progress bars and the prediction writer."""
