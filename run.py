"""hydraformer's entry point from a source checkout: ``python run.py [overrides]`` is the ``hydraformer`` command."""

import sys

from builder.tasks import main

if __name__ == "__main__":
    sys.exit(main())
