"""Turning a TaskGroup's ExceptionGroup back into the one error callers catch.

Parallel vault work (block uploads, index and manifest reads) runs in TaskGroups, which
raise an ExceptionGroup; callers decide by class (`except TamperedObjectError`), so the
group is unwrapped to the leaf that matters most, in the caller's order of preference.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["most_important"]


def most_important(
    grouped: BaseExceptionGroup[BaseException], prefer: Sequence[type[BaseException]]
) -> BaseException:
    """The first leaf of `grouped` that is an instance of `prefer[0]`, else of `prefer[1]`,
    ...; else the first leaf."""
    leaves: list[BaseException] = []

    def walk(group: BaseExceptionGroup[BaseException]) -> None:
        for exc in group.exceptions:
            if isinstance(exc, BaseExceptionGroup):
                walk(exc)
            else:
                leaves.append(exc)

    walk(grouped)
    for wanted in prefer:
        for exc in leaves:
            if isinstance(exc, wanted):
                return exc
    return leaves[0]
