"""`python -m bench.limiter`: the same as `agentq bench limiter`."""

from bench.limiter import main

raise SystemExit(main())
