"""The errors a user can cause and fix (bad input, files, options): reported as one plain line."""
from .data.readers import DataError
from .fileio import OutputError
from .kb.store import StoreError
from .model.encoder import EncoderUnavailable
from .model.images import ImageError
from .query import QueryError
from .train.checkpoint import CheckpointError
from .train.hub import HubError

USER_ERRORS = (DataError, CheckpointError, EncoderUnavailable, OutputError, ImageError, QueryError, StoreError,
               HubError, FileNotFoundError)
