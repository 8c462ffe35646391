"""One module per handbook section, holding that section's steps (the notebooks call them).

Each module exposes `NOTEBOOK` (its notebook's name) and `steps(ctx) -> list[Step]`; the
notebook runs the steps one by one, in cells of their own, with the handbook's text between.
"""
