from hgadapter.cli import main

raise SystemExit(main())
