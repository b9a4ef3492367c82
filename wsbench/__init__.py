"""wsbench: a benchmark harness for weakly supervised segmentation of vertebral metastases in CT."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("wsbench")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
