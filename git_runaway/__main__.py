from __future__ import annotations

from git_runaway.main import main

raise SystemExit(main())
