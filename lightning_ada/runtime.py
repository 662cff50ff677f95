"""CPU thread defaults that stay fast when several jobs share the cores.

Two settings, both overridable:

* **OpenMP wait policy.** torch's CPU kernels run on GNU OpenMP (``libgomp``), whose idle
  threads spin for a while before sleeping. When two jobs share the cores, the spinning
  threads of one steal the cores the other needs and both slow down by an order of magnitude.
  ``OMP_WAIT_POLICY=PASSIVE`` makes idle threads sleep at once. ``libgomp`` reads the variable
  when it is loaded, i.e. at ``import torch``: setting it later in the same process has no
  effect (measured: a 2-thread Conv3d step beside two busy processes ran as slowly with the
  variable set after ``import torch`` as without it, and an order of magnitude faster with it
  set before). :func:`prefer_passive_wait` therefore runs when ``lightning_ada`` is imported,
  which the command line (``lightning-ada``, ``python -m lightning_ada.main``) does before it
  imports torch. An explicit ``OMP_WAIT_POLICY`` is kept.
* **Intra-op threads.** :func:`apply_thread_defaults` (called first thing by the CLI's
  ``main``) uses, in this order: the ``--threads N`` option; the ``LIGHTNING_ADA_THREADS``
  environment variable; torch's own choice when ``OMP_NUM_THREADS`` is set; else **1 thread**.
  ``N = 0`` (or ``auto``) keeps torch's default (one thread per physical core). One thread is
  the safe default on a shared or small machine; on an idle machine with many cores pass
  ``--threads 0`` (or a count) for speed.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping

__all__ = ["ENV_THREADS", "apply_thread_defaults", "prefer_passive_wait", "resolve_threads"]

#: environment variable naming the torch intra-op thread count (``0``/``auto``: torch's default)
ENV_THREADS = "LIGHTNING_ADA_THREADS"
#: command-line option with the same meaning (removed before LightningCLI parses the rest)
OPTION = "--threads"


def prefer_passive_wait(environ: MutableMapping[str, str] | None = None) -> bool:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless the variable is set or torch is already loaded.

    Args:
        environ: the environment to change (default ``os.environ``).

    Returns:
        True when the variable was set by this call.
    """
    environ = os.environ if environ is None else environ
    if "OMP_WAIT_POLICY" in environ or "torch" in sys.modules:
        return False  # explicit choice kept; after ``import torch`` it would have no effect
    environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return True


def _parse_count(value: str, where: str) -> int | None:
    """Thread count of ``value`` (None: torch's default); ``where`` names it in errors."""
    text = value.strip().lower()
    if text in ("0", "auto"):
        return None
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 1:
        raise ValueError(f"{where} must be a positive thread count, 0 or 'auto', got {value!r}")
    return n


def _pop_option(args: list[str]) -> tuple[list[str], str | None]:
    """``args`` without ``--threads N`` / ``--threads=N``, and the last value given (or None)."""
    rest, value, i = [], None, 0
    while i < len(args):
        a = args[i]
        if a == OPTION:
            if i + 1 >= len(args):
                raise ValueError(f"{OPTION} needs a value (a thread count, 0 or 'auto')")
            value, i = args[i + 1], i + 2
            continue
        if a.startswith(OPTION + "="):
            value = a.split("=", 1)[1]
        else:
            rest.append(a)
        i += 1
    return rest, value


def resolve_threads(
    option: str | None, environ: MutableMapping[str, str] | None = None
) -> tuple[int | None, str]:
    """The thread count to use and where it comes from (module doc for the order).

    Returns:
        ``(count, source)``; ``count`` None means "leave torch's default".
    """
    environ = os.environ if environ is None else environ
    if option is not None:
        return _parse_count(option, OPTION), OPTION
    if environ.get(ENV_THREADS, "").strip():
        return _parse_count(environ[ENV_THREADS], ENV_THREADS), ENV_THREADS
    if environ.get("OMP_NUM_THREADS", "").strip():
        return None, "OMP_NUM_THREADS"
    return 1, "default"


def apply_thread_defaults(
    args: list[str] | None = None, environ: MutableMapping[str, str] | None = None
) -> list[str] | None:
    """Set torch's intra-op threads (module doc) and strip ``--threads`` from the arguments.

    Args:
        args: the CLI arguments (None: ``sys.argv[1:]``, as LightningCLI reads them).
        environ: the environment to read (default ``os.environ``).

    Returns:
        The arguments for LightningCLI: ``args`` itself when it holds no ``--threads``
        (None stays None), else a copy without it.

    Raises:
        ValueError: a bad ``--threads`` or ``LIGHTNING_ADA_THREADS`` value.
    """
    import torch

    given = list(sys.argv[1:] if args is None else args)
    rest, option = _pop_option(given)
    count, _ = resolve_threads(option, environ)
    if count is not None and torch.get_num_threads() != count:
        torch.set_num_threads(count)
    if option is None and len(rest) == len(given):
        return args
    return rest
