"""The command lines: ``python -m jaxseg.segment`` and ``python -m jaxseg.evaluate``."""
