from tcap.cli import main

raise SystemExit(main())
