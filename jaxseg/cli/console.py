"""The command line's terminal: warnings and errors as single lines beside a progress bar,
and JAX's persistent compilation cache."""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from typing import Optional


def default_cache_dir() -> str:
    """``$XDG_CACHE_HOME/jaxseg/jax``, or ``~/.cache/jaxseg/jax``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "jaxseg", "jax")


def configure_compile_cache(cache_dir: Optional[str]) -> None:
    """Turns JAX's persistent compilation cache on in ``cache_dir`` (off when None).

    Must run before the first compilation. Every program is cached, however small
    or quick to compile, so a second run of the same model compiles nothing.
    """
    import jax

    if cache_dir is None:
        jax.config.update("jax_enable_compilation_cache", False)
        return
    os.makedirs(cache_dir, exist_ok=True)
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)  # -1: no size floor


class Console:
    """Prints warnings once each and errors one line each, without breaking the progress bar."""

    def __init__(self, quiet: bool, debug: bool):
        self.quiet, self.debug, self.bar, self._seen = quiet, debug, None, set()

    def line(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def warn(self, message: str) -> None:
        if message not in self._seen:
            self._seen.add(message)
            self.line(f"warning: {message}")

    def failure(self, path: str, reason: str, trace: Optional[str] = None) -> None:
        if self.debug and trace:
            self.line(trace.rstrip())
        self.line(f"error: {path}: {reason}")

    def progress(self, total: int):
        from tqdm import tqdm

        # rate_noinv: images/s even below one image per second (tqdm would show s/img).
        self.bar = tqdm(total=total, unit="img", file=sys.stderr, dynamic_ncols=True,
                        disable=self.quiet or total <= 1, desc="segment",
                        bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} "
                                   "[{elapsed}<{remaining}, {rate_noinv_fmt}]")
        return self.bar


@contextlib.contextmanager
def warnings_to(console: Console):
    """Library warnings become one ``warning:`` line each (no file/line noise)."""
    previous = warnings.showwarning
    warnings.showwarning = lambda message, *rest, **kw: console.warn(str(message))
    try:
        yield
    finally:
        warnings.showwarning = previous
