"""The one error type for bad configs: its message names the key, the value and what is accepted."""


class ConfigError(ValueError):
    """A config the builder refuses; ``str(err)`` is the paragraph shown to the user."""

    def __init__(self, key: str, value, accepted: str, detail: str = ""):
        self.key, self.value, self.accepted = key, value, accepted
        text = f"{key}={value!r} is not accepted: {accepted}"
        if detail:
            text += f" ({detail})"
        super().__init__(text)


class DataError(ValueError):
    """A problem with the data configuration or the corpus (bad option, missing/empty/non-UTF-8 file)."""


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; the message names the step and what to change."""


def first_line(err: BaseException) -> str:
    """An exception's message cut to its first line (its type's name when it has none): the part of another
    library's error worth quoting inside a ConfigError. torch.load(weights_only=True)'s refusal starts with a
    paragraph suggesting weights_only=False: the line after it, naming what the file would have run, is quoted."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Weights only load failed"):
        return lines[1]
    return lines[0] if lines else type(err).__name__


def compile_refusal(key: str, what: str, err: BaseException) -> ConfigError | None:
    """The refusal of ``key``=true when ``err`` is torch.compile failing to build ``what`` (no working C++ compiler, a
    backend error), else None. The error is told by its type's name, so asking imports nothing of torch._dynamo."""
    if not any(cls.__name__ == "BackendCompilerFailed" and cls.__module__ == "torch._dynamo.exc"
               for cls in type(err).__mro__):
        return None
    return ConfigError(key, True, f"false on this machine: torch.compile could not build {what}", first_line(err))
