"""The base of every error the pipeline raises on bad input or a bad environment: the CLI prints
its message (which names the file and line, or the setting, at fault) without a traceback."""


class PipelineError(Exception):
    pass
