"""Class names and their order: the only place the output order of every model is defined.

Index on the 2020 prototype's scale: 0 no pneumonia, 1 bacterial pneumonia, 2 viral pneumonia.
"""

CLASS_NAMES: tuple[str, ...] = ("normal", "bacterial", "viral")
"""Class names in model output order (index 0, 1, 2)."""

CLASS_DESCRIPTIONS: dict[str, str] = {
    "normal": "No pneumonia",
    "bacterial": "Bacterial pneumonia (e.g. Streptococcus)",
    "viral": "Viral pneumonia (e.g. influenza, Covid-19)",
}
"""Human-readable description of each class, for reports and the web page."""

INTENDED_USE = (
    "Decision support for trained clinicians reading pediatric chest X-rays; not a diagnosis and "
    "not a medical device. Every result must be reviewed by a qualified clinician."
)
"""The notice shown wherever a result is shown."""


def class_index(name: str) -> int:
    """Return the output index of a class name.

    Raises:
        ValueError: if ``name`` is not one of :data:`CLASS_NAMES`.
    """
    try:
        return CLASS_NAMES.index(name)
    except ValueError:
        raise ValueError(f"unknown class {name!r}; expected one of {', '.join(CLASS_NAMES)}") from None
