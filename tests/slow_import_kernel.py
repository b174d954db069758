"""A RemoteKernel whose module takes 3 s to import: a kernel process slow to start up
(tests/test_fast_start.py: the session is created meanwhile)."""

from __future__ import annotations

import time

from remote_kernel.proxy.kernel import RemoteKernel

time.sleep(3)


class SlowImportKernel(RemoteKernel):
    pass
