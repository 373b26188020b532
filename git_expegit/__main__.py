from git_expegit.main import main

raise SystemExit(main())
