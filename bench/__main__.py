"""`python3 -m bench`: one full benchmark run (bench/run.py)."""

from bench.run import main

raise SystemExit(main())
