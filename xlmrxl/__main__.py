from xlmrxl.cli import main

raise SystemExit(main())
