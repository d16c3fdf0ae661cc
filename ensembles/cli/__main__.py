"""`python -m ecgtune.ensembles.cli ARGS`: the `ecgtune` console script."""

import sys

from ecgtune.ensembles.cli.main import main

sys.exit(main())
