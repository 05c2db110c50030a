"""The errors a user can cause and fix (bad input, files, options): reported as one plain line."""
from .checkpoint import CheckpointError
from .data import DataError
from .encoder import EncoderUnavailable
from .fileio import OutputError
from .hub import HubError
from .images import ImageError
from .query import QueryError
from .store import StoreError

USER_ERRORS = (DataError, CheckpointError, EncoderUnavailable, OutputError, ImageError, QueryError, StoreError,
               HubError, FileNotFoundError)
