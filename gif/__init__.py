"""gif: generalized influence functions for editing trained PyTorch classifiers.

Pure PyTorch: nothing here imports a web framework or a database driver."""

__version__ = "0.1.0"
