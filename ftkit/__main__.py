from ftkit.course.cli import main

raise SystemExit(main())
