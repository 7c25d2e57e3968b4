"""``python -m hgadapter.extract``: the same as ``hgadapter extract``."""

from hgadapter.extract.run import main

raise SystemExit(main())
