"""Exit codes and the error types every hyperkit function raises.

The CLI maps each :class:`HyperkitError` to one line ``Error: <what, where>`` plus an optional
``Hint:`` line and the error's exit code; anything else is an internal error (exit 5).

Example:
    >>> from hyperkit.errors import UnsafePickleError, ExitCode
    >>> err = UnsafePickleError("x.pt: pickle calls forbidden global 'os.system'")
    >>> err.exit_code is ExitCode.BAD_INPUT
    True
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes of the ``hyperkit`` command (DESIGN §2)."""

    OK = 0
    CHECK_FAILED = 1
    USAGE = 2
    BAD_INPUT = 3
    ENVIRONMENT = 4
    INTERNAL = 5


class HyperkitError(Exception):
    """Base of every error hyperkit raises on purpose; carries an exit code and a hint."""

    exit_code: ExitCode = ExitCode.INTERNAL

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class BadInputError(HyperkitError, ValueError):
    """The input is unknown, corrupt, unsafe or unsupported (exit 3)."""

    exit_code = ExitCode.BAD_INPUT


class UnknownFormatError(BadInputError):
    """No reader/writer is registered for this path or format name."""


class CorruptFileError(BadInputError):
    """The file is truncated, malformed or inconsistent with its own header."""


class UnsafePickleError(BadInputError):
    """The pickle would import a global outside the allowlist; nothing in it was run."""


class UnsupportedError(BadInputError):
    """A well-formed file that hyperkit deliberately does not handle (e.g. MonkeyPatch ResBlocks)."""


class StructureError(BadInputError):
    """Tensor keys or shapes contradict the declared layer structure."""


class LimitExceeded(BadInputError):
    """The input crosses one of hyperkit's explicit resource limits (:mod:`hyperkit.formats.limits`)."""


class OutputPathError(BadInputError):
    """The output path is unusable: missing folder, same as the input, or exists without --force."""


class UsageProblem(HyperkitError):
    """Options that contradict each other or the paths given (exit 2, like Click's usage errors)."""

    exit_code = ExitCode.USAGE


class EnvironmentProblem(HyperkitError):
    """A missing optional dependency, model weights or execution provider (exit 4)."""

    exit_code = ExitCode.ENVIRONMENT


class MissingDependencyError(EnvironmentProblem, ImportError):
    """An optional dependency is not installed; the hint names the pip extra."""


class CheckFailed(HyperkitError):
    """A check said no: verification mismatch, parity past tolerance, eval gate (exit 1)."""

    exit_code = ExitCode.CHECK_FAILED


class VerificationError(CheckFailed):
    """What was written does not reload to what was meant to be written."""


#: An error line longer than this is cut (a hostile key or path must not flood the terminal).
MAX_MESSAGE_CHARS = 1000


def sanitize(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text`` made safe for one terminal line: control characters, line breaks and lone surrogates
    (undecodable bytes of a file name) escaped, and cut to ``limit`` characters.

    Example:
        >>> sanitize("bad key 'a\\nb\\x1b[31m'")
        "bad key 'a\\\\nb\\\\x1b[31m'"
        >>> sanitize("x" * 20, limit=10)
        'xxxxxxxxxx… (10 more characters)'
    """
    out = []
    for ch in text:
        code = ord(ch)
        if code < 0x20 or 0x7F <= code < 0xA0 or 0xD800 <= code < 0xE000 or ch in "\u2028\u2029":
            if 0xDC80 <= code <= 0xDCFF:  # a byte that os.fsdecode could not decode: show the byte
                out.append(f"\\x{code - 0xDC00:02x}")
            else:
                out.append(ch.encode("unicode_escape").decode("ascii") if code < 0xD800 else f"\\u{code:04x}")
        else:
            out.append(ch)
    clean = "".join(out)
    if len(clean) > limit:
        clean = f"{clean[:limit]}… ({len(clean) - limit} more characters)"
    return clean


def require(module: str, extra: str) -> None:
    """Raise :class:`MissingDependencyError` naming the pip extra when ``module`` is missing.

    Example:
        >>> require("json", "core")
    """
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise MissingDependencyError(
            f"optional dependency '{module}' is not installed",
            hint=f'pip install "hyperkit[{extra}]"',
        )
