"""The first module the forkserver of :class:`~quflow.experiments._training.Workers`
imports, before torch. It gives SIGINT its default action and unblocks it (the server
starts with it blocked, see ``_training._start_forkserver``), so that Ctrl-C while the
server starts or imports torch (seconds) ends the server at once and silently, where
Python would print its traceback; the worker starts queued on it end with it (one started
later would fail, with a traceback, on the interrupted parent's vanished semaphores).
Once its imports are done the server ignores SIGINT; a worker it forks ends silently on
SIGINT until :func:`~quflow.experiments._training._worker_init` installs the handler
that interrupts a run.
"""

import signal

signal.signal(signal.SIGINT, signal.SIG_DFL)
if hasattr(signal, "pthread_sigmask"):
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
