"""dualenc: dual encoders for natural-language -> code search.

Public surface: ``hookimpl`` for plugin authors, ``load_config``, ``Retriever``.
"""

from importlib.metadata import PackageNotFoundError, version

from dualenc.registry.hookspecs import hookimpl

try:
    __version__ = version("dualenc")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"


def load_config(*args, **kwargs):
    """Load and validate a run config; see ``dualenc.core.configio.load_config``."""
    from dualenc.core.configio import load_config as _load_config

    return _load_config(*args, **kwargs)


def __getattr__(name):
    if name == "Retriever":  # imported lazily: it pulls in torch and faiss
        from dualenc.core.index import Retriever

        return Retriever
    raise AttributeError(name)


__all__ = ["Retriever", "__version__", "hookimpl", "load_config"]
