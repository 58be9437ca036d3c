"""Option validators for attrs fields, with messages in dualenc's style.

``attrs.field(default=0.07, validator=greater_than(0))`` makes a config error read
``loss.temperature: must be > 0 (got -1.0)``. Any validator that raises ``ValueError`` or
``TypeError`` works the same way; attrs' own put a tuple in the message, hence these.
"""

from __future__ import annotations


def at_least(minimum):
    def check(instance, attribute, value):
        if value is not None and value < minimum:
            raise ValueError(f"must be >= {minimum} (got {value})")

    return check


def greater_than(bound):
    def check(instance, attribute, value):
        if value is not None and not value > bound:
            raise ValueError(f"must be > {bound} (got {value})")

    return check


def at_most(maximum):
    def check(instance, attribute, value):
        if value is not None and value > maximum:
            raise ValueError(f"must be <= {maximum} (got {value})")

    return check


def one_of(*choices):
    def check(instance, attribute, value):
        if value not in choices:
            allowed = ", ".join(repr(c) for c in choices)
            raise ValueError(f"must be one of {allowed} (got {value!r})")

    return check


def non_empty(instance, attribute, value):
    if not value:
        raise ValueError("must not be empty")
