"""The errors a user can cause, one class per kind of bad input.

Every message names the problem (the key, file or value) and the fix. The command-line entry points catch
`MMGenError` in one place (`mmgen.cli.cli_main`), print `error: <message>` and exit with code 2; anything
else is a bug in the code and keeps its traceback.

Each class also derives from the builtin that callers caught before it existed (`ValueError`, or
`FileNotFoundError` for a missing data set), so `except ValueError` keeps working.
"""

from __future__ import annotations


class MMGenError(Exception):
    """Bad input that the user can fix; the message says what is wrong and how to fix it."""


class ConfigError(MMGenError, ValueError):
    """A config file or override that does not match its dataclass, or a value out of its range."""


class DataError(MMGenError, ValueError):
    """A data source, shard set or data option that cannot be used."""


class SampleError(DataError):
    """A stored sample that cannot be decoded (corrupt image, bad JSON, missing part)."""


class DataNotFound(DataError, FileNotFoundError):
    """A real data set is not where the data root says; the message names the path and the fix."""


class FileInputError(MMGenError, ValueError):
    """A path given by the user that is missing, unreadable, binary where text is expected, or of the wrong kind."""


class MissingInput(FileInputError, FileNotFoundError):
    """A file or folder the user named (shards, a tokenizer, a release, a checkpoint) that is not there."""


class TokenizerError(MMGenError, ValueError):
    """A text or image tokenizer file that is missing, corrupt or does not match the model."""


class CheckpointError(MMGenError, ValueError):
    """A checkpoint or release folder that is incomplete, corrupt or does not match the config."""


class PromptError(MMGenError, ValueError):
    """A prompt that cannot be run (missing or unreadable image, too long, bad options)."""
