"""Imported inside each notebook kernel that ``q4-reproduce`` starts: silence one known ipykernel shutdown race.

When papermill shuts a kernel down after a successful notebook, ipykernel (7.4.0, the newest when this was written)
can still flush stderr from its control thread - ``process_control`` after the ``shutdown_request`` handler - while
the main thread is closing the IOPub sockets.  The send fails and pyzmq's ZMQStream logs, on the
``tornado.general`` logger, the record CI printed after a notebook that finished fine::

    ERROR:tornado.general:Uncaught exception in ZMQStream callback
    ...
    zmq.error.ZMQError: Socket operation on non-socket

(ipykernel PR 1518 catches the same error on another path.)  This module adds a logging filter that drops exactly
those records - an exception ZMQError with errno ENOTSOCK - and only once the kernel has begun to shut down (it has
answered a shutdown request), or when that cannot be told (an ipykernel without the attribute we read).  The same
error while a notebook runs, any other errno or exception, and every plain message are kept.

Importing it imports q4core (and so numpy) before the notebook's first cell, as the notebooks' own first cell
would; a notebook must not rely on setting BLAS or OpenMP variables in a cell before it imports numpy."""
import logging

# pyzmq's ZMQStream logs through "tornado.general"; tornado's and asyncio's loops log callback errors through
# "tornado.application" and "asyncio"
LOGGERS = ("tornado.general", "tornado.application", "asyncio")


def _enotsock():
    try:
        import zmq
    except ImportError:
        return None, None
    return zmq.ZMQError, zmq.ENOTSOCK


def shutting_down():
    """True once this process's ipykernel has answered a shutdown request; also True when that cannot be told (no
    kernel instance, or an ipykernel without ``_shutdown_message``), so the known race stays silent there."""
    try:
        from ipykernel.kernelbase import Kernel
    except ImportError:
        return True
    if not Kernel.initialized():
        return True
    kernel = Kernel.instance()
    if not hasattr(kernel, "_shutdown_message"):
        return True
    return kernel._shutdown_message is not None


def is_shutdown_race(record):
    """True for a log record whose exception is a ZMQError with errno ENOTSOCK (a send on a socket closed under
    it) logged while the kernel shuts down."""
    exc = record.exc_info[1] if record.exc_info else None
    error, enotsock = _enotsock()
    if exc is None or error is None or not (isinstance(exc, error) and exc.errno == enotsock):
        return False
    return shutting_down()


class ShutdownRaceFilter(logging.Filter):
    def filter(self, record):
        return not is_shutdown_race(record)


def install():
    """Attach the filter to the loggers that report the race (idempotent)."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, ShutdownRaceFilter) for f in logger.filters):
            logger.addFilter(ShutdownRaceFilter())


install()
