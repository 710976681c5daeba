"""Entry point of ``python -m modoboa_pro.demo`` (``make demo``)."""

from modoboa_pro.demo.run import main

raise SystemExit(main())
