from taxiway.cli import main

raise SystemExit(main())
