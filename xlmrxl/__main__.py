"""``python -m xlmrxl``: the command line (``xlmrxl.cli``)."""

from xlmrxl.cli import main

raise SystemExit(main())
