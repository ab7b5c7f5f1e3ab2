"""brainalign.cli: the ``brainalign`` command and the library functions behind it."""
