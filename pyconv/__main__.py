from pyconv.cli import main

raise SystemExit(main())
