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
    paragraph suggesting weights_only=False and asking for an issue: only what its unpickler stopped at (an
    unsupported global the file would have run, an opcode of a file that is no pickle) is quoted."""
    text = str(err)
    if text.startswith("Weights only load failed") and "\n" in text:
        why = text.split("\n", 1)[1].split("Check the documentation", 1)[0].split("WeightsUnpickler error:")[-1]
        if why.strip():
            return "its unpickler stopped at: " + " ".join(why.split()).rstrip(".")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def compile_refusal(key: str, what: str, err: BaseException) -> ConfigError | None:
    """The refusal of ``key``=true when ``err`` is torch.compile failing to build ``what`` (no working C++ compiler, a
    backend error), else None. The error is told by its type's name, so asking imports nothing of torch._dynamo."""
    if not any(cls.__name__ == "BackendCompilerFailed" and cls.__module__ == "torch._dynamo.exc"
               for cls in type(err).__mro__):
        return None
    return ConfigError(key, True, f"false on this machine: torch.compile could not build {what}", first_line(err))
