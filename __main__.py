from catcache.cli import main

raise SystemExit(main())
