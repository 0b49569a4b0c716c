"""Errors a user can cause. The CLI prints them as one line and exits 2."""


class UserError(Exception):
    """A mistake in the user's input (unknown name, missing file, bad number).

    The message says what was wrong and what to do instead; it is shown as-is.
    """


def first_line(exc: BaseException) -> str:
    """`Type: first line of the message` of an exception, for one-line reports of user-code failures."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:300]}" if text else type(exc).__name__


def finite(name: str, value: float, low: float | None = None, high: float | None = None,
           low_open: bool = False) -> float:
    """`value` if it is a finite number within [low, high] ((low, high] with `low_open`), else a UserError
    naming the option. NaN compares false with everything, so range checks alone let it through."""
    import math

    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (low is None or (value > low if low_open else value >= low)) and (high is None or value <= high)
    if not ok:
        bounds = [f"{'>' if low_open else '>='} {low:g}" if low is not None else "", f"<= {high:g}" if high is not None else ""]
        raise UserError(f"{name} must be a finite number{' ' + ' and '.join(b for b in bounds if b) if any(bounds) else ''}, got {value}")
    return value
