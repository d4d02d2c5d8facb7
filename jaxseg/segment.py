"""``python -m jaxseg.segment``: the segmentation command line (``jaxseg.cli.segment``).

Only an entry point: nothing in jaxseg imports this module, so ``jaxseg.segment`` stays
the function. Import ``jaxseg.cli.segment`` to use the command line from Python.
"""

if __name__ == "__main__":
    import sys

    from jaxseg.cli.segment import main

    sys.exit(main())
