from picojoule.cli import main

raise SystemExit(main())
