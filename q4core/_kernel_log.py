"""Imported inside each notebook kernel that ``q4-reproduce`` starts: silence one known ipykernel shutdown race.

When papermill shuts a kernel down after a successful notebook, ipykernel (7.x) can still flush stderr or publish
an "idle" status from its control thread while the main thread is closing the IOPub sockets.  The send fails with
``zmq.ZMQError: Socket operation on non-socket`` (ENOTSOCK) and tornado logs a full traceback ("Uncaught exception
in ZMQStream callback") after a notebook that finished fine (ipykernel PR 1518 fixes one of these paths upstream).
This module adds a logging filter that drops exactly those records: a ZMQError with errno ENOTSOCK.  Any other
record - another errno, another exception, a plain message - is kept.  It imports nothing of q4core's numerics."""
import errno
import logging

# tornado's ZMQStream logs through "tornado.general"; asyncio's loop logs callback errors through "asyncio"
LOGGERS = ("tornado.general", "tornado.application", "asyncio")


def is_shutdown_race(record):
    """True for a log record whose exception is a ZMQError with errno ENOTSOCK (a send on a socket closed under it)."""
    exc = record.exc_info[1] if record.exc_info else None
    if exc is None:
        return False
    try:
        import zmq
    except ImportError:
        return False
    return isinstance(exc, zmq.ZMQError) and exc.errno == errno.ENOTSOCK


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
