"""One process-wide lock around transformers' `from_pretrained`.

`from_pretrained` temporarily patches torch globals while it builds a model (meta-device
initialisation, tied-weight bookkeeping). Two loads in different threads interleave those
patches and can leave one in place for the rest of the process: later loads then get
untied or meta-device weights ("Cannot copy out of meta tensor"). Seen here when the Chat tab
loaded three models at once. Every in-process load takes this lock; loads are I/O-bound and
rare, so serialising them costs little.
"""

from __future__ import annotations

import threading

LOAD_LOCK = threading.RLock()
