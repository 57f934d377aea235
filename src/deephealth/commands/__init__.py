"""Sub-commands of the ``deephealth`` command line, one module each."""
