from memgauge.cli import main

raise SystemExit(main())
