"""The notebook engine: runner, kernel, records, HTML exports, widgets."""
