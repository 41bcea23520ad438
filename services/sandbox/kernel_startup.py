# Runs inside the sandbox's kernel at start (IPKernelApp.exec_files), before any user code.
# Bounds output at its source: ipykernel buffers what is printed in the kernel's memory until
# it is sent, so a tight print loop could exhaust the memory limit before the service ever
# sees a byte. Per execution, the first KEPT bytes pass, the rest is dropped, and past
# STOP bytes printing raises, which stops the loop with a clear error.
# The service fills in the two numbers.
import sys as _sys

_KEPT = __KEPT__  # noqa: F821 - filled in by the service
_STOP = __STOP__  # noqa: F821


class OutputLimitExceeded(Exception):
    pass


class _Budget:
    written = 0


class _BoundedStream:
    def __init__(self, stream):
        self._stream = stream

    def write(self, text):
        size = len(text)
        before = _Budget.written
        _Budget.written += size
        if _Budget.written > _STOP:
            _Budget.written = 0  # the traceback itself must still print
            raise OutputLimitExceeded(f"the code printed more than {_STOP} characters in one execution")
        if before >= _KEPT:
            return size
        if _Budget.written > _KEPT:
            return self._stream.write(text[: _KEPT - before]) or size
        return self._stream.write(text)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _reset_budget(*_args, **_kwargs):
    _Budget.written = 0


_sys.stdout = _BoundedStream(_sys.stdout)
_sys.stderr = _BoundedStream(_sys.stderr)
get_ipython().events.register("pre_execute", _reset_budget)  # noqa: F821 - IPython's global
del _sys
