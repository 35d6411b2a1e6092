from freezer_app.cli import main

raise SystemExit(main())
