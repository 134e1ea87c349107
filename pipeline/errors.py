"""The base of every error the pipeline raises on bad input or a bad environment: the CLI prints
its message (which names the file and line, or the setting, at fault) without a traceback."""


class PipelineError(Exception):
    pass


class DataError(PipelineError, ValueError):
    """Bad input data; the message names the file (or dataset) and the line (or position)."""


class OutputError(PipelineError, OSError):
    """An output could not be written (full disk, file size limit, read-only file system)."""
