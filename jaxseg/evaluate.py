"""``python -m jaxseg.evaluate``: the evaluation command line (``jaxseg.cli.evaluate``).

Only an entry point: nothing in jaxseg imports this module, so ``jaxseg.evaluate`` stays
the function. Import ``jaxseg.cli.evaluate`` to use the command line from Python.
"""

if __name__ == "__main__":
    import sys

    from jaxseg.cli.evaluate import main

    sys.exit(main())
