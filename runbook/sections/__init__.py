"""One module per handbook section, holding that section's steps (the notebooks call them).

Each module exposes `NOTEBOOK` (its notebook's name) and its step functions; which steps a
notebook runs, in which cells, with the handbook's text between, is declared once in
`runbook.sections.outline`.
"""
