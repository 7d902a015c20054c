from gateway.service import main

raise SystemExit(main())
